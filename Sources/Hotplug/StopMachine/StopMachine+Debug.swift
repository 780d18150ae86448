
extension Machine {
    /// Debugging only, for proving that a checker catches a broken stop_machine: when true, an idle CPU that a
    /// stop_machine claimed (docs/ARCHITECTURE.md, "stop_machine and the barrier") leaves its idle wait as soon as
    /// work is posted to it, as if it had never been claimed, so it may run a tasklet or a job while a body runs.
    /// Process-wide. Never set it in a program that relies on stop_machine.
    @_spi(Debugging)
    public static func debugLetClaimedCPUsRun(_ enabled: Bool) {
        Shim.debugIgnoreClaims(enabled)
    }
}
