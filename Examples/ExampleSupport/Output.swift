#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Prints a line and flushes it (the progress lines must appear while the run goes on).
public func report(_ line: String) {
    print(line)
    fflush(nil)
}

/// Writes a line to standard error, unbuffered (for output that must stay off a machine-read stdout).
public func reportToStandardError(_ line: String) {
    writeAll(Array((line + "\n").utf8), to: STDERR_FILENO)
}

/// Writes `bytes` to a file descriptor, retrying short writes and EINTR; gives up silently on any other error
/// (there is nowhere left to report it).
public func writeAll(_ bytes: [UInt8], to fd: Int32) {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { buffer in
            write(fd, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
        }
        if written < 0 {
            if errno == EINTR { continue }
            return
        }
        offset += written
    }
}

/// `text` left-aligned in a column of `width` characters (at least one space after it).
public func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

/// `text` right-aligned in a column of `width` characters.
public func padLeft(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

/// `value` with exactly `digits` digits after the point.
public func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int64((value * scale).rounded())
    let whole = scaled / Int64(scale), fraction = abs(scaled % Int64(scale))
    guard digits > 0 else { return "\(whole)" }
    let text = String(fraction)
    let sign = scaled < 0 && whole == 0 ? "-" : ""
    return "\(sign)\(whole).\(String(repeating: "0", count: digits - text.count))\(text)"
}
