import COpenSSL

/// Why TLS could not be set up: carries OpenSSL's own reason and the file concerned.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public var description: String

    init(_ what: String) {
        description = "\(what): \(TLSError.drainOpenSSLErrors())"
    }

    /// A failed handshake, with OpenSSL's reasons said the way an operator looks for them.
    static func handshake(_ role: TLSContext.Role, verifies: Bool, session: OpaquePointer) -> TLSError {
        var reasons = drainOpenSSLErrors()
        // A rejected certificate is recorded on the session, whether or not the error queue says so. OpenSSL records
        // its verdict without verification too (`verify: none`), where it is not why the handshake failed.
        let verification = SSL_get_verify_result(session)
        if role == .client, verifies, verification != X509_V_OK {
            reasons = "certificate verify failed: \(String(cString: X509_verify_cert_error_string(verification)))"
        }
        var error = TLSError(description: "TLS handshake failed: \(reasons)")
        if role == .client, reasons.contains("wrong version number") || reasons.contains("packet length too long")
            || reasons.contains("record layer failure") {
            error.description = "real server answered plain text on a TLS connection (is backend_tls set for a port without TLS?): \(reasons)"
        } else if role == .client, reasons.contains("certificate verify failed") {
            error.description = "real server's certificate was not accepted (backend_tls: ca_file, server_name, or verify: none for a lab): \(reasons)"
        }
        return error
    }

    init(description: String) {
        self.description = description
    }

    /// OpenSSL keeps errors on a per-thread queue; read them all so the next call starts clean.
    static func drainOpenSSLErrors() -> String {
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return reasons.isEmpty ? "unknown OpenSSL error" : reasons.joined(separator: "; ")
    }
}

/// An OpenSSL SSL_CTX: the certificate, key and protocol settings shared by every connection of one role.
/// Immutable once built, which is what makes sharing it across event loops safe (OpenSSL locks internally).
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let role: Role

    public enum Role: Sendable { case server, client }

    /// A server context with certificates chosen by SNI: `default` answers clients that send no name or a name
    /// no other certificate covers; each of `byName` answers the names its certificate lists.
    public static func server(default main: (certificateChain: String, privateKey: String),
                              byName: [(certificateChain: String, privateKey: String)]) throws -> TLSContext {
        let context = try server(certificateChain: main.certificateChain, privateKey: main.privateKey)
        guard !byName.isEmpty else { return context }
        let others = try byName.map { try server(certificateChain: $0.certificateChain, privateKey: $0.privateKey) }
        let pointers = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: others.count)
        for (index, other) in others.enumerated() { pointers[index] = other.context }
        let table = UnsafeMutablePointer<lb_sni_table>.allocate(capacity: 1)
        table.initialize(to: lb_sni_table(contexts: pointers, count: Int32(others.count)))
        lb_SSL_CTX_set_sni_table(context.context, table)
        context.sni = (others, table)
        return context
    }

    /// The SNI contexts and the table OpenSSL's callback reads; kept alive as long as this context.
    private var sni: (contexts: [TLSContext], table: UnsafeMutablePointer<lb_sni_table>)?

    /// A server context: TLS 1.2 minimum, ALPN http/1.1, no renegotiation.
    public static func server(certificateChain: String, privateKey: String) throws -> TLSContext {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw TLSError("cannot create a TLS context") }
        let context = TLSContext(ctx, role: .server)
        try context.applyCommonSettings()
        guard SSL_CTX_use_certificate_chain_file(ctx, certificateChain) == 1 else {
            throw TLSError("cannot load certificate chain \(certificateChain)")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, privateKey, SSL_FILETYPE_PEM) == 1 else {
            let reasons = TLSError.drainOpenSSLErrors()
            if reasons.contains("key values mismatch") {
                throw TLSError(description: "private key \(privateKey) does not match certificate \(certificateChain)")
            }
            throw TLSError(description: "cannot load private key \(privateKey): \(reasons)")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSError("private key \(privateKey) does not match certificate \(certificateChain)")
        }
        lb_SSL_CTX_use_http11_alpn(ctx)
        return context
    }

    /// A client context for health checks: the real server's certificate is not verified (checks ask "does it
    /// answer?", and back-end certificates are often self-signed).
    public static func client() throws -> TLSContext {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw TLSError("cannot create a TLS context") }
        let context = TLSContext(ctx, role: .client)
        try context.applyCommonSettings()
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        return context
    }

    /// A client context towards real servers: with `verify`, the server's certificate must chain to `caFile` (or
    /// the system's CAs); the name or address it must carry is set per connection (`TLSHandler`). With a client
    /// certificate and key for servers that ask for one.
    public static func client(verify: Bool, caFile: String?, certificate: String?, key: String?) throws -> TLSContext {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw TLSError("cannot create a TLS context") }
        let context = TLSContext(ctx, role: .client)
        try context.applyCommonSettings()
        if verify {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            if let caFile {
                guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else { throw TLSError("cannot load CA file \(caFile)") }
            } else {
                guard SSL_CTX_set_default_verify_paths(ctx) == 1 else { throw TLSError("cannot load the system's CA certificates") }
            }
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        }
        if let certificate, let key {
            guard SSL_CTX_use_certificate_chain_file(ctx, certificate) == 1 else {
                throw TLSError("cannot load client certificate \(certificate)")
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
                throw TLSError("cannot load client key \(key)")
            }
            guard SSL_CTX_check_private_key(ctx) == 1 else {
                throw TLSError("client key \(key) does not match certificate \(certificate)")
            }
        }
        context.verifies = verify
        return context
    }

    /// Whether the peer's certificate is verified (client contexts).
    public private(set) var verifies = false

    /// Checks a certificate and key pair without keeping a context: for `lbctl config check` and `lbd --check`.
    public static func checkPair(certificate: String, key: String) throws {
        _ = try server(certificateChain: certificate, privateKey: key)
    }

    /// Checks that a CA file can be loaded.
    public static func checkCAFile(_ path: String) throws {
        _ = try client(verify: true, caFile: path, certificate: nil, key: nil)
    }

    private init(_ context: OpaquePointer, role: Role) {
        self.context = context
        self.role = role
    }

    private func applyCommonSettings() throws {
        guard lb_SSL_CTX_set_min_proto_version(context, lb_TLS1_2_VERSION()) == 1 else {
            throw TLSError("cannot require TLS 1.2")
        }
        _ = lb_SSL_CTX_set_mode(context, lb_SSL_MODE_RELEASE_BUFFERS())
        _ = lb_SSL_CTX_set_options(context, lb_SSL_OP_NO_RENEGOTIATION())
    }

    deinit {
        SSL_CTX_free(context)
        if let sni {
            sni.table.pointee.contexts.deallocate()
            sni.table.deallocate()
        }
    }
}
