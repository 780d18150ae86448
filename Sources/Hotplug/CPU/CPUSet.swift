/// A set of logical CPU ids, like the kernel's `cpumask`: a bitmap, iterated in ascending order.
///
/// Ids are in `0...65535` (``largestID``): far above any kernel's CPU count (and ``Machine/maximumCPUs``), low
/// enough that a set never takes more than 8 KiB. ``init(validating:)`` and ``init(parsing:)`` refuse other ids;
/// ``insert(_:)``, ``init(_:)`` and an array literal trap on them (a programmer error), with a message naming the id
/// and the range. Queries (``contains(_:)``, ``remove(_:)``) accept any id.
public struct CPUSet: Sendable, Hashable, Sequence, CustomStringConvertible, ExpressibleByArrayLiteral {
    private var words: [UInt64] = []

    /// The empty set.
    public init() {}
    /// The set of `cpus`.
    /// - Precondition: every id is in `0...65535` (``largestID``); ``init(validating:)`` throws instead.
    public init<S: Sequence>(_ cpus: S) where S.Element == Int { for cpu in cpus { insert(cpu) } }
    /// The set of the listed ids.
    /// - Precondition: every id is in `0...65535` (``largestID``).
    public init(arrayLiteral cpus: Int...) { self.init(cpus) }

    /// The set of `cpus`, checked.
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` naming the first id outside
    ///   `0...65535` (``largestID``).
    public init<S: Sequence>(validating cpus: S) throws(HotplugError) where S.Element == Int {
        self.init()
        for cpu in cpus {
            guard (0...CPUSet.largestID).contains(cpu) else {
                throw .invalidArgument(name: "CPU id", value: "\(cpu)", valid: "0...\(CPUSet.largestID)")
            }
            insert(cpu)
        }
    }

    /// The largest id a set holds.
    public static let largestID = 65_535

    /// The largest CPU id ``init(parsing:)`` accepts: ``largestID``.
    public static let largestParsedID = largestID

    /// The set a kernel CPU list describes: `0-3,8,10-11`, the format of `/sys/devices/system/cpu/online`, of
    /// cpuset files and of `Cpus_allowed_list`. For a non-empty set it is the inverse of ``description``.
    ///
    /// Strict: white space (spaces, tabs, newlines) may surround the list but not stand inside it, and an empty
    /// list (or only white space) is the empty set. Nil for anything else: an empty item (`1,,2`, `0,`), a sign,
    /// a descending range (`3-1`), anything but digits, `-` and `,`, or an id above ``largestParsedID``.
    public init?(parsing text: String) {
        self.init()
        let bytes = Array(text.utf8)
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }
        var index = 0
        var end = bytes.count
        while index < end, isSpace(bytes[index]) { index += 1 }
        while end > index, isSpace(bytes[end - 1]) { end -= 1 }
        if index == end { return }
        // A decimal id at `index`, nil when there is none or it is too large.
        func id() -> Int? {
            var value = 0
            let first = index
            while index < end, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
                value = value * 10 + Int(bytes[index] - UInt8(ascii: "0"))
                guard value <= CPUSet.largestParsedID else { return nil }
                index += 1
            }
            return index > first ? value : nil
        }
        while true {
            guard let low = id() else { return nil }
            var high = low
            if index < end, bytes[index] == UInt8(ascii: "-") {
                index += 1
                guard let last = id(), last >= low else { return nil }
                high = last
            }
            insert(low...high)
            if index == end { return }
            guard bytes[index] == UInt8(ascii: ",") else { return nil }
            index += 1
        }
    }

    /// Inserts the ids of `range` a word at a time.
    private mutating func insert(_ range: ClosedRange<Int>) {
        let firstWord = range.lowerBound / 64
        let lastWord = range.upperBound / 64
        if words.count <= lastWord { words += repeatElement(0, count: lastWord + 1 - words.count) }
        for word in firstWord...lastWord {
            let from = word == firstWord ? range.lowerBound % 64 : 0
            let to = word == lastWord ? range.upperBound % 64 : 63
            let upTo: UInt64 = to == 63 ? .max : (1 << UInt64(to + 1)) - 1
            words[word] |= upTo & ~((1 << UInt64(from)) - 1)
        }
    }

    /// Whether `cpu` is in the set (false for any id outside `0...65535`).
    public func contains(_ cpu: Int) -> Bool {
        guard cpu >= 0, cpu / 64 < words.count else { return false }
        return words[cpu / 64] & (1 << UInt64(cpu % 64)) != 0
    }

    /// Adds `cpu`.
    /// - Precondition: `cpu` is in `0...65535` (``largestID``); otherwise it traps with a message naming `cpu`
    ///   and the range.
    public mutating func insert(_ cpu: Int) {
        precondition((0...CPUSet.largestID).contains(cpu), "CPUSet: CPU id \(cpu) is outside 0...\(CPUSet.largestID)")
        while words.count <= cpu / 64 { words.append(0) }
        words[cpu / 64] |= 1 << UInt64(cpu % 64)
    }

    /// Removes `cpu` (nothing for an id that is not in the set, whatever its value).
    public mutating func remove(_ cpu: Int) {
        guard cpu >= 0, cpu / 64 < words.count else { return }
        words[cpu / 64] &= ~(1 << UInt64(cpu % 64))
        while let last = words.last, last == 0 { words.removeLast() }
    }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    /// The ids in ascending order, a set bit at a time (no allocation, no per-id closure call: the hotplug and
    /// stop_machine paths walk the online mask on every operation).
    public struct Iterator: IteratorProtocol {
        private let words: [UInt64]
        private var wordIndex = 0
        private var remaining: UInt64

        fileprivate init(_ words: [UInt64]) {
            self.words = words
            remaining = words.first ?? 0
        }

        public mutating func next() -> Int? {
            while remaining == 0 {
                wordIndex += 1
                guard wordIndex < words.count else { return nil }
                remaining = words[wordIndex]
            }
            let bit = remaining.trailingZeroBitCount
            remaining &= remaining - 1   // clear the lowest set bit
            return wordIndex * 64 + bit
        }
    }

    public func makeIterator() -> Iterator { Iterator(words) }

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
