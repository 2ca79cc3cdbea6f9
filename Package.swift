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
// AVX-512 where the building machine has it (its /proc/cpuinfo), so that the GEMMs' 16-float tile
// rows are one register each (SIMD.swift: RVec, wideTiles). SALIENT_SIMD=avx2 builds the portable
// AVX2 binary (`make dist` does), SALIENT_SIMD=avx512 forces AVX-512. The binary checks the CPU at
// start and says so, rather than dying on an illegal instruction, if it was built for more.
func hostHasAVX512() -> Bool {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return false }
    let have = Set(flags.split(separator: " ").map(String.init))
    return ["avx512f", "avx512vl", "avx512bw", "avx512dq"].allSatisfy(have.contains)
}
#if arch(x86_64)
    let avx512: Bool = {
        switch ProcessInfo.processInfo.environment["SALIENT_SIMD"] {
        case "avx2": return false
        case "avx512": return true
        default: return hostHasAVX512()
        }
    }()
    // The x86 code-generation flags, for the C target as they are and for Swift's clang importer behind -Xcc.
    let x86Flags = ["-mavx2", "-mfma"] + (avx512 ? ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"] : [])
    let simdFlags: [SwiftSetting] = [
        .unsafeFlags(x86Flags.flatMap { ["-Xcc", $0] } + (avx512 ? ["-DSALIENT_AVX512"] : []))
    ]
#else
    let avx512 = false
    let simdFlags: [SwiftSetting] = []
#endif
let swiftFlags = simdFlags
if avx512 { parallelC.append(.define("SALIENT_AVX512")) }
#if arch(x86_64)
    // The C target's vector code (transpose.c) at the Swift kernels' width.
    parallelC.append(.unsafeFlags(x86Flags))
#endif

let package = Package(
    name: "salient",
    platforms: [.macOS(.v13)],
    products: [.executable(name: "salient", targets: ["salient"])],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
    ],
    targets: [
        .target(name: "CParallel", cSettings: parallelC, linkerSettings: parallelL),
        .target(
            name: "CImage", cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("png"), .linkedLibrary("jpeg"), .linkedLibrary("z")]),
        // Open MPI, loaded at run time (dlopen) only when the binary is started by mpirun.
        .target(name: "CMPI", cSettings: [.unsafeFlags(["-O2"])], linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "Kernels", dependencies: ["CParallel"], exclude: ["README.md"], swiftSettings: swiftFlags),
        .target(name: "Network", dependencies: ["Kernels"], swiftSettings: swiftFlags),
        .target(name: "Cluster", dependencies: ["CMPI", "Kernels", "Network"], swiftSettings: swiftFlags),
        .target(name: "Data", dependencies: ["Kernels", "CImage"], exclude: ["README.md"], swiftSettings: swiftFlags),
        .target(
            name: "Contrastive", dependencies: ["Network", "Data", "Kernels", "Cluster"], swiftSettings: swiftFlags),
        .executableTarget(
            name: "salient",
            dependencies: [
                "Contrastive", "Network", "Data", "Kernels", "Cluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser")
            ], swiftSettings: swiftFlags),
        .target(
            name: "TestSupport", dependencies: ["Kernels", "Network"], path: "Tests/TestSupport",
            swiftSettings: swiftFlags),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "TestSupport"], swiftSettings: swiftFlags),
        .testTarget(
            name: "NetworkTests", dependencies: ["Network", "Kernels", "Data", "TestSupport"], swiftSettings: swiftFlags
        ),
        .testTarget(name: "DataTests", dependencies: ["Data", "Kernels", "TestSupport"], swiftSettings: swiftFlags),
        .testTarget(
            name: "ContrastiveTests",
            dependencies: ["Contrastive", "Network", "Data", "Kernels", "Cluster", "TestSupport"],
            swiftSettings: swiftFlags),
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "Network"], swiftSettings: swiftFlags)
    ]
)
