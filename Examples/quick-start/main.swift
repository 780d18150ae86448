// Examples/quick-start/main.swift, shown in the README's Usage section. Run it: `swift run quick-start`.
import Hotplug

// Four logical CPUs, all online. They may outnumber the CPUs the process may use: they share them then.
let machine = try Machine(cpus: 4, configuration: .init(
    interruptHandler: { cpu, interruption in print("CPU \(cpu) got \(interruption)") }))
defer { machine.shutdown() }

// Cross-calls: run on a logical CPU's own (pinned) thread, at its next safe point.
let here = try machine.run(on: 1) { machine.currentCPU! }         // 1
let all = try machine.runOnEach { cpu in cpu * 10 }               // [0: 0, 1: 10, 2: 20, 3: 30]
print("run(on: 1) ran on CPU \(here); runOnEach returned \(all.sorted { $0.key < $1.key }.map(\.value))")

// SIGP orders, with S/390 condition codes and status bits.
try machine.sigp(1, .stop)                                        // accepted: CPU 1 stops wherever it is
while try machine.sigp(1, .sense).conditionCode == .busy {}       // cc 2 while the STOP is still pending
try machine.sigp(1, .externalCall, parameter: 42)                 // cc 0: it waits while CPU 1 is stopped
print("SENSE: \(try machine.sigp(1, .sense))")                    // cc 1, status 0xc0 (stopped, call pending)
try machine.sigp(1, .start)                                       // resumes it; the handler gets .externalCall(42, nil)

// Lifecycle: standby -> configure -> parked -> online -> offline (parked) -> deconfigure -> standby.
try machine.offline(1)     // detach: teardowns, stop_machine, the thread parks in the kernel
try machine.online(1)      // attach: startups, stop_machine, SIGP START wakes it
try machine.offline(1)
try machine.deconfigure(1) // the thread exits and is joined
try machine.configure(1)

// Per-CPU data that follows attach and detach: a state's callbacks run for every CPU that comes and goes.
let caches = PerCPU<[Int]>(machine) { _ in [] }
try machine.hotplug.register("cache:online", section: .online,
    startup: { cpu in caches.withLocal { _, cache in cache.reserveCapacity(64) } },   // on the CPU itself
    teardown: { cpu in caches.withLocal { _, cache in cache.removeAll() } })
try machine.hotplug.register("cache:dead", section: .prepare,
    startup: nil,
    teardown: { cpu in try caches.withSlot(of: cpu) { $0.removeAll() } })            // after the CPU is dead
try machine.online(1)

// Every rollback path is testable: make one callback fail once.
try machine.hotplug.injectFailure(cpu: 1, at: .teardownCPU, direction: .teardown)
do { try machine.offline(1) } catch { print(error) }   // "... failed on CPU 1 ...; the CPU is back where it started"

// Tasklets (Linux semantics): run at a CPU's safe point; a detached CPU's pending ones move to a survivor.
let flush = Tasklet(machine, priority: .high) { print("flushing on CPU \(machine.currentCPU!)") }
try flush.schedule(on: 1)       // from any thread; lock-free; coalesces until it runs
try flush.kill()                // removes a queued run, waits for a running one

// stop_machine: every online CPU held with its SIGP signal blocked while the body runs on one of them.
try machine.stopMachine { cpu in print("everyone else is stopped; running on CPU \(cpu)") }
machine.withCPUsReadLocked { print("stable online mask:", machine.online) }
