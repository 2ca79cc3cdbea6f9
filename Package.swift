// swift-tools-version:6.0
// salient: contrastive self-supervised ResNet training on CPUs.
import PackageDescription
import Foundation

// OpenMP: the Swift toolchain's clang has no omp.h of its own; use Debian's libomp-dev (any LLVM
// version). Without it the C parallel-for falls back to a serial loop.
func findOpenMP() -> (include: String, lib: String)? {
    let fm = FileManager.default
    let roots = ((try? fm.contentsOfDirectory(atPath: "/usr/lib")) ?? [])
        .filter { $0.hasPrefix("llvm-") }.sorted().reversed()
    for r in roots {
        let lib = "/usr/lib/\(r)/lib"
        let clangDir = "\(lib)/clang"
        for v in ((try? fm.contentsOfDirectory(atPath: clangDir)) ?? []).sorted().reversed() {
            let inc = "\(clangDir)/\(v)/include"
            if fm.fileExists(atPath: "\(inc)/omp.h") && fm.fileExists(atPath: "\(lib)/libomp.so") {
                return (inc, lib)
            }
        }
    }
    return nil
}
let noOMP = ProcessInfo.processInfo.environment["SALIENT_NO_OMP"] != nil
let omp = noOMP ? nil : findOpenMP()
var parallelC: [CSetting] = [.unsafeFlags(["-O3"])]
var parallelL: [LinkerSetting] = []
if let omp {
    parallelC.append(.unsafeFlags(["-fopenmp", "-isystem", omp.include]))
    parallelL.append(.unsafeFlags(["-L\(omp.lib)", "-Xlinker", "-rpath", "-Xlinker", omp.lib]))
    parallelL.append(.linkedLibrary("omp"))
}

// Real FMA instructions on x86-64 (without them SIMD addProduct becomes a libm call); nothing
// architecture-specific elsewhere: FMA is baseline on aarch64.
#if arch(x86_64)
let simdFlags: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-mavx2", "-Xcc", "-mfma"])]
#else
let simdFlags: [SwiftSetting] = []
#endif

let package = Package(
    name: "salient",
    platforms: [.macOS(.v13)],
    products: [.executable(name: "salient", targets: ["salient"])],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CParallel", cSettings: parallelC, linkerSettings: parallelL),
        .target(name: "CImage", cSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("png"), .linkedLibrary("z")]),
        .target(name: "Kernels", dependencies: ["CParallel"], exclude: ["README.md"], swiftSettings: simdFlags),
        .target(name: "Network", dependencies: ["Kernels"], swiftSettings: simdFlags),
        .target(name: "Data", dependencies: ["Kernels", "CImage"], exclude: ["README.md"], swiftSettings: simdFlags),
        .target(name: "Contrastive", dependencies: ["Network", "Data", "Kernels"], swiftSettings: simdFlags),
        .executableTarget(name: "salient", dependencies: [
            "Contrastive", "Network", "Data", "Kernels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: simdFlags),
        .target(name: "TestSupport", dependencies: ["Kernels", "Network"], path: "Tests/TestSupport",
                swiftSettings: simdFlags),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "TestSupport"], swiftSettings: simdFlags),
        .testTarget(name: "NetworkTests", dependencies: ["Network", "Kernels", "Data", "TestSupport"], swiftSettings: simdFlags),
        .testTarget(name: "DataTests", dependencies: ["Data", "Kernels", "TestSupport"], swiftSettings: simdFlags),
        .testTarget(name: "ContrastiveTests", dependencies: ["Contrastive", "Network", "Data", "Kernels", "TestSupport"], swiftSettings: simdFlags),
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "Network"], swiftSettings: simdFlags),
    ]
)
