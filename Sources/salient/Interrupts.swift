// SIGINT and SIGTERM during training: the first one asks the run to stop at the next step boundary
// (it writes a checkpoint there and exits 130 or 143); the same signal again ends the process at
// once (the handler is reset to the default on its first delivery).
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The signal received (0: none). Written by the handler, read between training steps.
nonisolated(unsafe) private var receivedSignal: Int32 = 0

enum Interrupts {
    /// Installs the handler for SIGINT and SIGTERM.
    static func install() {
        for sig in [SIGINT, SIGTERM] {
            var action = sigaction()
            #if canImport(Glibc)
                action.__sigaction_handler.sa_handler = interruptHandler
            #else
                action.__sigaction_u.__sa_handler = interruptHandler
            #endif
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART | Int32(bitPattern: UInt32(SA_RESETHAND))
            sigaction(sig, &action, nil)
        }
    }

    /// The signal received since `install`, 0 when none.
    static var received: Int32 { receivedSignal }

    static func name(_ sig: Int32) -> String { sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal \(sig)" }
}

/// Records the signal and says (with write(2), which a handler may call) that the run is stopping.
private func interruptHandler(_ sig: Int32) {
    receivedSignal = sig
    let text: StaticString =
        "\nsalient: stopping at the end of this step to write a checkpoint (interrupt again to quit at once)\n"
    _ = write(2, text.utf8Start, text.utf8CodeUnitCount)
}
