import COpenSSL

/// HMAC-SHA-256 and random bytes from the system OpenSSL: opaque identifiers that cannot be guessed or reversed
/// without the installation's secret (the persistence cookie's server id).
public enum KeyedHash {
    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let done = key.withUnsafeBytes { keyBytes in
            data.withUnsafeBytes { dataBytes in
                output.withUnsafeMutableBufferPointer { out in
                    HMAC(EVP_sha256(), keyBytes.baseAddress, Int32(key.count),
                         dataBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count, out.baseAddress, &length)
                }
            }
        }
        return done == nil ? [] : Array(output.prefix(Int(length)))
    }

    /// `count` bytes from OpenSSL's CSPRNG; nil if it cannot provide them.
    public static func randomBytes(_ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let done = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        return done == 1 ? bytes : nil
    }
}
