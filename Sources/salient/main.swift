import ArgumentParser
import Kernels
print("salient")
