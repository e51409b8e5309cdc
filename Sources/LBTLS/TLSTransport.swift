import COpenSSL
import NIOCore

/// The bytes between OpenSSL and the channel: OpenSSL reads the ciphertext received straight from the channel's
/// buffer and writes what it sends straight into a buffer for the channel, through a BIO of lb's own (`bio(for:)`).
/// Memory BIOs would copy each way once more, keep a buffer of the largest record each way for as long as the
/// connection lives, and cost their own control calls for every record (measured in process: about 1,500
/// instructions an HTTPS exchange).
struct TLSTransport {
    /// Ciphertext received and not yet read by OpenSSL: the channel's buffer itself, or, when OpenSSL left part
    /// of one unread (it reads a record at a time), that part with what came next appended.
    private var input: ByteBuffer?
    /// Ciphertext OpenSSL has written since it was last taken.
    private var output: ByteBuffer?
    /// The storage of the last ciphertext sent, written over by the next once the socket has let go of it.
    private var keptOutput = ReusableBuffer()
    var allocator = ByteBufferAllocator()

    /// How many received bytes OpenSSL has not read.
    var unreadInput: Int { input?.readableBytes ?? 0 }

    /// Whether a buffer is kept (for tests).
    var keepsOutputBuffer: Bool { keptOutput.isKept }

    mutating func received(_ ciphertext: ByteBuffer) {
        guard var unread = input, unread.readableBytes > 0 else {
            input = ciphertext
            return
        }
        input = nil  // so the append below does not copy the buffer it is given
        unread.writeImmutableBuffer(ciphertext)
        input = unread
    }

    /// Lets go of the channel's buffer once OpenSSL has read all of it, so the channel can read into it again.
    mutating func releaseReadInput() {
        if unreadInput == 0 { input = nil }
    }

    /// What OpenSSL wrote since the last call, if anything.
    mutating func takeOutput() -> ByteBuffer? {
        guard let written = output else { return nil }
        output = nil
        keptOutput.keep(written)
        return written
    }

    mutating func dropKeptBuffers() {
        keptOutput = ReusableBuffer()
        releaseReadInput()
    }

    /// The BIO OpenSSL's read (BIO_read) and write (BIO_write) for `handler` go through; nil if OpenSSL cannot make
    /// one. `handler` must outlive it: the SSL object that owns it is freed by the handler (`freeSession`).
    static func bio(for handler: TLSHandler) -> OpaquePointer? {
        guard let method = transportMethod, let bio = BIO_new(method) else { return nil }
        BIO_set_data(bio, Unmanaged.passUnretained(handler).toOpaque())
        BIO_set_init(bio, 1)
        return bio
    }

    fileprivate mutating func read(into destination: UnsafeMutableRawPointer, count: Int) -> Int {
        guard var unread = input, unread.readableBytes > 0 else { return 0 }
        input = nil
        let copied = unread.withUnsafeReadableBytes { source -> Int in
            guard let base = source.baseAddress else { return 0 }
            let copied = min(count, source.count)
            destination.copyMemory(from: base, byteCount: copied)
            return copied
        }
        unread.moveReaderIndex(forwardBy: copied)
        input = unread
        return copied
    }

    fileprivate mutating func write(_ source: UnsafeRawPointer, count: Int) {
        var buffer: ByteBuffer
        if let written = output {
            output = nil  // so the append below does not copy the buffer
            buffer = written
        } else {
            buffer = keptOutput.take(capacity: count, allocator: allocator)
        }
        buffer.writeBytes(UnsafeRawBufferPointer(start: source, count: count))
        output = buffer
    }
}

/// The handler a BIO serves, without a reference count of its own: the handler outlives the call.
private func transportHandler(_ bio: OpaquePointer?) -> Unmanaged<TLSHandler>? {
    guard let bio, let data = BIO_get_data(bio) else { return nil }
    return Unmanaged<TLSHandler>.fromOpaque(data)
}

/// One method for every connection's BIO, made at first use. Writes always succeed (the buffer grows); a read
/// with nothing received asks OpenSSL to retry (SSL_ERROR_WANT_READ), as a memory BIO does.
private nonisolated(unsafe) let transportMethod: OpaquePointer? = {
    guard let method = BIO_meth_new(BIO_get_new_index() | lb_BIO_TYPE_SOURCE_SINK(), "lb TLS transport") else {
        return nil
    }
    _ = BIO_meth_set_read(method) { bio, data, length in
        guard let bio, let data, length > 0, let handler = transportHandler(bio) else { return 0 }
        lb_BIO_clear_retry_flags(bio)
        let copied = handler._withUnsafeGuaranteedRef { $0.transport.read(into: data, count: Int(length)) }
        guard copied > 0 else {
            lb_BIO_set_retry_read(bio)
            return -1
        }
        return Int32(copied)
    }
    _ = BIO_meth_set_write(method) { bio, data, length in
        guard let bio, let data, length >= 0, let handler = transportHandler(bio) else { return -1 }
        lb_BIO_clear_retry_flags(bio)
        handler._withUnsafeGuaranteedRef { $0.transport.write(data, count: Int(length)) }
        return length
    }
    _ = BIO_meth_set_ctrl(method) { _, command, _, _ in
        // Flushing has nothing to do: what was written is taken by the handler after each OpenSSL call. Nothing
        // else (pending counts, descriptors, kernel TLS) applies to this BIO.
        command == BIO_CTRL_FLUSH ? 1 : 0
    }
    return method
}()
