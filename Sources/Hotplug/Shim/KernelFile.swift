#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The kernel's small text files (`/proc`, `/sys`, cgroup files), read without Foundation: the follower reads the
/// CPU lists it watches through it, and so can an application (a thread's `/proc/self/task/TID/status`, say).
public enum KernelFile {
    /// The whole contents of the file at `path`, or nil when it cannot be opened or read.
    ///
    /// It reads until end of file rather than trusting the file's size: `/proc` and `/sys` files report a size of
    /// 0 (or a page) whatever they hold. Meant for small files: the contents are held in memory.
    public static func read(_ path: String) -> String? { (try? contentsIfPresent(path)) ?? nil }

    /// The whole contents of the file at `path`, as ``read(_:)``, nil when there is no such file (`open` fails
    /// with `ENOENT` or `ENOTDIR`), and the reason when there is one that cannot be read: the follower's quota
    /// source tells a cgroup without a limit file (no limit there) from a limit it cannot read.
    /// - Throws: ``HotplugError/system(call:errno:)`` with call `open` or `read`.
    static func contentsIfPresent(_ path: String) throws(HotplugError) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno   // right after the call, before anything may allocate
            if code == ENOENT || code == ENOTDIR { return nil }
            throw .system(call: "open", errno: code)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { readSome(fd, into: $0) }
            if count < 0 {
                let code = errno   // right after the call, before anything may allocate
                if code == EINTR { continue }
                throw .system(call: "read", errno: code)
            }
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// read(2) (at file scope: inside ``KernelFile`` the name `read` is the type's own).
private func readSome(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    read(fd, buffer.baseAddress, buffer.count)
}
