import Foundation
import Testing
@testable import Hotplug

/// The kernel's CPU-list format (`0-3,8,10-11`) read by ``CPUSet/init(parsing:)``, and ``KernelFile``, which
/// reads the files that hold such lists.
@Suite struct CPUSetTests {
    @Test func parsesTheKernelListFormat() {
        #expect(CPUSet(parsing: "0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11])
        #expect(CPUSet(parsing: "5") == [5])
        #expect(CPUSet(parsing: "7-7") == [7])
        #expect(CPUSet(parsing: "0,0-1,1") == [0, 1])   // overlaps are a union
        #expect(CPUSet(parsing: "8,0-3") == [0, 1, 2, 3, 8])   // any order
    }

    /// Iteration yields every member once, ascending, across word boundaries and past empty words.
    @Test func iteratesEveryMemberInOrder() {
        let ids = [0, 1, 63, 64, 65, 127, 128, 300, 1000, 65535]
        #expect(Array(CPUSet(ids)) == ids)
        #expect(Array(CPUSet()).isEmpty)
        #expect(Array(CPUSet(0..<200)) == Array(0..<200))
        var rng = SystemRandomNumberGenerator()
        let random = (0..<50).map { _ in Int.random(in: 0...4000, using: &rng) }
        #expect(Array(CPUSet(random)) == Array(Set(random)).sorted())
        #expect(CPUSet(random).count == Set(random).count)
    }

    @Test func whiteSpaceMaySurroundTheList() {
        #expect(CPUSet(parsing: "0-3,8\n") == [0, 1, 2, 3, 8])   // as sysfs writes it
        #expect(CPUSet(parsing: " \t0-1\r\n") == [0, 1])
        #expect(CPUSet(parsing: "") == CPUSet())
        #expect(CPUSet(parsing: " \n") == CPUSet())
        #expect(CPUSet(parsing: "")?.isEmpty == true)
    }

    @Test(arguments: ["3-1", "x", "1,,2", "0,", ",0", "-1", "+1", "1-", "-", "0-3 ,8", "0 - 3", "1 2", "0-3\n8",
                      "1-2-3", "0x10", "1.5", "0-3:2/4", "٣"])
    func rejectsMalformedLists(_ text: String) {
        #expect(CPUSet(parsing: text) == nil)
    }

    @Test func roundTripsThroughDescription() {
        var generator = SeededGenerator(seed: 0x5EED_CB05)
        for _ in 0..<500 {
            var set = CPUSet()
            let bound = Int.random(in: 1...300, using: &generator)
            for _ in 0..<Int.random(in: 1...40, using: &generator) {
                let low = Int.random(in: 0..<bound, using: &generator)
                let high = min(bound, low + Int.random(in: 0...12, using: &generator))
                for cpu in low...high { set.insert(cpu) }
            }
            #expect(CPUSet(parsing: set.description) == set, "\(set)")
        }
        // The empty set's description is for people ("(none)"); the kernel writes an empty list as "".
        #expect(CPUSet(parsing: CPUSet().description) == nil)
    }

    @Test func largeIDsAcrossWords() throws {
        let range = try #require(CPUSet(parsing: "60-200"))
        #expect(range.count == 141 && range.contains(60) && range.contains(63) && range.contains(64))
        #expect(range.contains(127) && range.contains(128) && range.contains(200) && !range.contains(59))
        #expect(!range.contains(201))
        #expect(range == CPUSet(60...200))
        #expect(CPUSet(parsing: "63") == [63])
        #expect(CPUSet(parsing: "64") == [64])
        #expect(CPUSet(parsing: "0-63") == CPUSet(0...63))
        #expect(CPUSet(parsing: "0-64") == CPUSet(0...64))

        let largest = CPUSet.largestParsedID
        #expect(CPUSet(parsing: "\(largest)") == [largest])
        let all = try #require(CPUSet(parsing: "0-\(largest)"))
        #expect(all.count == largest + 1)
        #expect(CPUSet(parsing: "\(largest + 1)") == nil)
        #expect(CPUSet(parsing: "0-\(largest + 1)") == nil)
        #expect(CPUSet(parsing: "99999999999999999999999999") == nil)   // past Int: no overflow trap
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/sys/devices/system/cpu/online")))
    func theKernelsOnlineListHoldsTheAffinityMask() throws {
        let text = try #require(KernelFile.read("/sys/devices/system/cpu/online"))
        let online = try #require(CPUSet(parsing: text), "unparsable: \(text)")
        #expect(!online.isEmpty)
        for cpu in try Shim.affinity() { #expect(online.contains(cpu), "CPU \(cpu) of the affinity mask") }
    }
}

@Suite struct KernelFileTests {
    @Test func readsAWholeFileInSeveralChunks() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kernel-file-\(getpid()).txt").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let text = (0..<2_000).map { "line \($0)" }.joined(separator: "\n")   // about 17 KB: five reads
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(KernelFile.read(path) == text)
    }

    @Test func readsProcFilesThatReportNoSize() throws {
        let status = try #require(KernelFile.read("/proc/self/status"))
        #expect(status.contains("Cpus_allowed_list:"))
    }

    @Test func aMissingFileIsNil() {
        #expect(KernelFile.read("/proc/self/no-such-file") == nil)
        #expect(KernelFile.read("") == nil)
    }
}

/// The shim reports failures as returned errno values: the error carries the C call's own code, whatever Swift
/// allocated on the way to the throw.
@Suite struct ShimErrnoTests {
    /// A tid no thread has: PID_MAX_LIMIT, which the kernel's ids stay below whatever pid_max says.
    static let noThread: Int32 = 4_194_304

    /// The errno value of the ``HotplugError/system(call:errno:)`` that `body` throws, nil for anything else.
    private func errno(_ body: () throws -> Void) -> Int32? {
        do {
            try body()
            return nil
        } catch let HotplugError.system(_, code) {
            return code
        } catch {
            return nil
        }
    }

    @Test func affinityCallsReportTheirErrno() {
        #expect(errno { _ = try Shim.affinity(of: Self.noThread) } == ESRCH)
        #expect(errno { try Shim.pin(thread: Self.noThread, to: 0) } == ESRCH)
        #expect(errno { try Shim.pin(thread: 0, to: 8_192) } == EINVAL)   // past the shim's mask size
        #expect(errno { try Shim.setAffinity(thread: 0, cpus: [-1]) } == EINVAL)
        #expect(errno { try Shim.setAffinity(thread: 0, cpus: []) } == EINVAL)   // the kernel refuses an empty mask
    }

    @Test func threadCPUTimeReportsItsErrno() throws {
        #expect(errno { _ = try Shim.threadCPUTime(Self.noThread) } == EINVAL)
        // Ids that the thread clock cannot encode must not wrap around to the caller's own clock.
        #expect(errno { _ = try Shim.threadCPUTime(Int32.max) } == EINVAL)
        #expect(errno { _ = try Shim.threadCPUTime(0) } == EINVAL)
        #expect(try Shim.threadCPUTime(Shim.currentThreadID) > 0)
    }

    @Test func currentPhysicalCPUIsInTheAffinityMask() throws {
        #expect(try Shim.affinity().contains(Shim.currentPhysicalCPU()))
    }
}
