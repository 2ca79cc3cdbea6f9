import ArgumentParser
import Kernels
#if canImport(Glibc)
    import Glibc
#endif

// An AVX-512 build (the default where the building machine has it) on a CPU without it: say so
// before any kernel runs into an illegal instruction.
if !Threads.cpuSupportsBuild {
    note(
        "salient: this binary was built for \(simdBuildName), which this CPU lacks; rebuild it here, "
            + "or build a portable one with SALIENT_SIMD=avx2 make build")
    exit(1)
}

// A mistake in the arguments (or in SALIENT_THREADS / SALIENT_CONV) is reported with the usage line;
// an error met while running is reported alone.
var command: ParsableCommand
do {
    try EnvironmentSettings.apply()
    command = try Salient.parseAsRoot()
} catch {
    Salient.exit(withError: error)
}
do {
    try command.run()
} catch let code as ExitCode {
    exit(code.rawValue)
} catch {
    note("Error: " + Salient.message(for: error))
    exit(Salient.exitCode(for: error).rawValue)
}
