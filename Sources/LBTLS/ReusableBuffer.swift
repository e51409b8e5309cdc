import NIOCore

/// A buffer one side of a connection writes into, kept from one message to the next: message heads in the HTTP
/// proxy, plaintext read and ciphertext sent in `TLSHandler`. Once the socket (or the next handler) has let go of
/// the last message's bytes, this holds the only reference to their storage again, and the next message is written
/// over it: a kept-alive connection then allocates no buffer per message. While anything else still holds them
/// (bytes queued for a slow peer, a request kept for a retry, a read not yet decoded), `ByteBuffer`'s copy-on-write
/// leaves them alone and the next message gets new storage; nothing still in use is ever written over.
package struct ReusableBuffer {
    private var kept: ByteBuffer?
    /// A buffer larger than this (a rare head with big cookies, a bulk transfer's record) is not kept: an idle
    /// connection holds little.
    package static let keptCapacityLimit = 4096

    package init() {}

    /// An empty buffer with room for `capacity` bytes: the kept one's storage if nothing else holds it.
    package mutating func take(capacity: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard var buffer = kept else { return allocator.buffer(capacity: capacity) }
        kept = nil  // so that `buffer` may be the storage's only reference
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Whether a buffer is kept (for tests).
    package var isKept: Bool { kept != nil }

    /// Keeps the buffer just written, once nothing more will be written into it, for the next `take`.
    package mutating func keep(_ buffer: ByteBuffer) {
        kept = buffer.capacity <= Self.keptCapacityLimit ? buffer : nil
    }
}
