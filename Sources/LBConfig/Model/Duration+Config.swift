extension Duration {
    /// Milliseconds, rounded down; the config's finest unit.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    public var isWholeSeconds: Bool { milliseconds % 1000 == 0 }

    /// The shortest config spelling: `500ms`, `2s`, `5m`.
    public var configText: String {
        let ms = milliseconds
        if ms % 60_000 == 0, ms != 0 { return "\(ms / 60_000)m" }
        if ms % 1000 == 0 { return "\(ms / 1000)s" }
        return "\(ms)ms"
    }
}

extension String {
    /// Zero-padded on the left to `length` characters (hex ids, DICOM status codes).
    public func leftPadded(to length: Int) -> String {
        count >= length ? self : String(repeating: "0", count: length - count) + self
    }
}
