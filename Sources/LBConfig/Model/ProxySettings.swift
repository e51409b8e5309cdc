/// Timeouts of lbd's own proxy (Layer 7 modes). The kernel keeps its own for Layer 4.
public struct ProxyTimeouts: Hashable, Sendable {
    /// Establishing the connection to a real server; past it, another server is tried.
    public var connect: Duration
    /// No byte in either direction; long enough for a paused DICOM association.
    public var idle: Duration
    /// l7-http: a client must send a complete request head within this time (slowloris guard).
    public var header: Duration
    /// l7-http: the longest pause allowed between two pieces of a request body.
    public var body: Duration

    public static let `default` = ProxyTimeouts(connect: .seconds(5), idle: .seconds(600), header: .seconds(10), body: .seconds(30))

    public init(connect: Duration, idle: Duration, header: Duration, body: Duration) {
        self.connect = connect
        self.idle = idle
        self.header = header
        self.body = body
    }
}

/// Bounds that keep one client, or a flood of them, from exhausting lbd (Layer 7 modes).
public struct ProxyLimits: Hashable, Sendable {
    /// Concurrent client connections per virtual service; further ones are refused at once.
    public var maxConnections: Int
    /// l7-http: the whole request head (request line and headers), in bytes.
    public var maxHeaderBytes: Int
    /// l7-http: the number of header fields in one request.
    public var maxHeaders: Int

    public static let `default` = ProxyLimits(maxConnections: 10_000, maxHeaderBytes: 32 * 1024, maxHeaders: 100)

    public init(maxConnections: Int, maxHeaderBytes: Int, maxHeaders: Int) {
        self.maxConnections = maxConnections
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaders = maxHeaders
    }
}
