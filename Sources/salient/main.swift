import ArgumentParser

Salient.main()
