import Testing
@testable import Hotplug

@Test func smoke() throws {
    let m = try Machine(cpus: 2)
    #expect(m.online == [0, 1])
    let v = try m.run(on: 1) { m.currentCPU }
    #expect(v == 1)
    #expect(try m.sigp(1, .sense) == SIGPResult(conditionCode: .accepted))
    try m.offline(1)
    #expect(m.online == [0])
    #expect(try m.sigp(1, .sense).status == .stopped)
    try m.online(1)
    try m.offline(1)
    try m.deconfigure(1)
    #expect(try m.sigp(1, .sense).conditionCode == .notOperational)
    m.shutdown()
}
