/// A set of logical CPU ids, like the kernel's `cpumask`: a bitmap, iterated in ascending order.
public struct CPUSet: Sendable, Hashable, Sequence, CustomStringConvertible, ExpressibleByArrayLiteral {
    private var words: [UInt64] = []

    public init() {}
    public init<S: Sequence>(_ cpus: S) where S.Element == Int { for cpu in cpus { insert(cpu) } }
    public init(arrayLiteral cpus: Int...) { self.init(cpus) }

    public func contains(_ cpu: Int) -> Bool {
        guard cpu >= 0, cpu / 64 < words.count else { return false }
        return words[cpu / 64] & (1 << UInt64(cpu % 64)) != 0
    }

    public mutating func insert(_ cpu: Int) {
        precondition(cpu >= 0, "CPU ids are not negative: \(cpu)")
        while words.count <= cpu / 64 { words.append(0) }
        words[cpu / 64] |= 1 << UInt64(cpu % 64)
    }

    public mutating func remove(_ cpu: Int) {
        guard cpu >= 0, cpu / 64 < words.count else { return }
        words[cpu / 64] &= ~(1 << UInt64(cpu % 64))
        while let last = words.last, last == 0 { words.removeLast() }
    }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    public func makeIterator() -> AnyIterator<Int> {
        var index = 0
        let words = self.words
        return AnyIterator {
            while index < words.count * 64 {
                defer { index += 1 }
                if words[index / 64] & (1 << UInt64(index % 64)) != 0 { return index }
            }
            return nil
        }
    }

    public static func == (lhs: CPUSet, rhs: CPUSet) -> Bool { lhs.words == rhs.words }
    public func hash(into hasher: inout Hasher) { hasher.combine(words) }

    /// The kernel's list format: `0-3,8,10-11`.
    public var description: String {
        var parts: [String] = []
        var start: Int?
        var previous = -2
        for cpu in self {
            if cpu != previous + 1 {
                if let s = start { parts.append(s == previous ? "\(s)" : "\(s)-\(previous)") }
                start = cpu
            }
            previous = cpu
        }
        if let s = start { parts.append(s == previous ? "\(s)" : "\(s)-\(previous)") }
        return parts.isEmpty ? "(none)" : parts.joined(separator: ",")
    }
}
