// sigp-demo: drives a Machine's logical CPUs through their lifecycle, sends every modelled SIGP order and checks
// each condition code, status bit and side effect against the rules of docs/ARCHITECTURE.md, "Logical CPUs and their
// threads" and "SIGP orders". Exits 0 when every check held; otherwise prints a line starting with `FAILED` that
// names the check and the `--seed` value that repeats the run, and exits 1.
//
// Everything it verifies on the real OS threads:
// - condition codes and status bits of every order, on online, stopped, parked and standby CPUs;
// - only one external call may be pending (cc 1 + 0x80 for the second), emergency signals queue, and every
//   accepted interruption reaches the interrupt handler exactly once (or is cleared by a reset / deconfigure);
// - STOP stops a CPU spinning in a cross-call wherever it is (its thread CPU time stops growing), START resumes
//   it, STOP_AND_STORE_STATUS stores a non-zero instruction and stack pointer;
// - a pending RESTART makes every order but the resets answer cc 2 (busy);
// - cross-calls (`run(on:)`, `runOnEach`) run on the right logical CPU and on its physical CPU;
// - every online CPU's thread is pinned to exactly one CPU (`Cpus_allowed_list`), a parked CPU's thread CPU time
//   does not grow (schedstat), a deconfigured CPU's thread is gone;
// - masks: active ⊆ online ⊆ present ⊆ possible, consistent with each CPU's state; lifecycle errors are typed.
//
// The files:
// - main.swift: the command (options, the machine, the verdict);
// - Demo.swift: the demo's state and its main loop (a lifecycle step, a random scenario, the invariants);
// - Interrupts.swift: what each CPU's interrupt handler received, and what it must have received;
// - Checks.swift: the check bookkeeping, sending an order and checking its answer, bounded waits;
// - Invariants.swift: what must hold between any two steps (masks, pinning, parked CPUs' CPU time);
// - Lifecycle.swift: configure, online, offline and deconfigure, each checked, and the typed lifecycle errors;
// - CrossCalls.swift: cross-calls checked for where they run, and the spinning call that keeps a CPU busy;
// - OrderScenarios.swift: the SIGP orders against stopped, running, restart-pending and parked CPUs;
// - Report.swift: the progress lines and the final report.

import ArgumentParser
import Dispatch
import ExampleSupport
import Hotplug
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct SIGPDemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sigp-demo",
        abstract: "Cycle logical CPUs through their lifecycle, send every modelled SIGP order, check every answer.",
        discussion: """
            Exits 0 when every check held. Otherwise prints a line starting with FAILED that names the check and \
            the random seed; run again with that --seed to repeat the same choices.
            """
    )

    @Option(help: "Logical CPUs (default: one per CPU of the process affinity mask, at least 2; more than the mask holds oversubscribes).")
    var cpus: Int?

    @Option(help: "How long to run, in seconds.")
    var seconds: Double = 10

    @Option(help: "Seed of the random choices (which CPU gets which order and lifecycle step). Default: random, printed.")
    var seed: UInt64?

    @Option(help: "Log level: trace, debug (the library's lifecycle transitions), info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if let cpus, cpus < 2 { throw ValidationError("--cpus must be at least 2") }
        guard seconds.isFinite, seconds > 0 else { throw ValidationError("--seconds must be a positive number") }
    }

    func run() throws {
        bootstrapLogging(level: logLevel)
        let logger = Logger(label: "sigp-demo")
        let seed = self.seed ?? UInt64.random(in: .min ... .max)

        let topology = try setUp("read the topology", seed: seed) { try Topology.current() }
        let count = cpus ?? max(2, topology.cpus.count)
        Watchdog.start(afterSeconds: seconds + 60, program: "the demo", seed: seed)

        let recorder = InterruptRecorder(cpus: count)
        let machine = try setUp("create a machine of \(count) logical CPUs", seed: seed) {
            let configuration = Machine.Configuration(interruptHandler: { cpu, interruption in
                recorder.record(cpu: cpu, interruption)
            })
            return try Machine(topology: topology, cpus: count, configuration: configuration, logger: logger)
        }

        let physical = topology.physicalCPUs.count
        report("sigp-demo: \(count) logical CPUs on \(physical) physical CPU\(physical == 1 ? "" : "s") "
               + "(\(count > physical ? "oversubscribed" : "one each")), signal \(machine.signal), seed \(seed), "
               + "\(fixed(seconds, 1)) s")

        let demo = Demo(machine: machine, recorder: recorder, seed: seed, logger: logger)
        let failure = demo.run(seconds: seconds)
        let totals = demo.deliveryTotals()
        machine.shutdown()
        demo.printReport(totals: totals, failed: failure != nil)
        if let failure {
            report("FAILED \(failure.check): \(failure.detail) (seed \(seed))")
            throw ExitCode.failure
        }
        report("OK: every check held (seed \(seed))")
    }
}

SIGPDemo.main()
