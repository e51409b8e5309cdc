extension String {
    /// The text's lines as YAML and editors number them: split at every line feed, a Windows line end's CR kept at
    /// the end of its line (so joining with "\n" gives the text back). Not `split(separator: "\n")`: Swift reads
    /// CR LF as one Character, which that never splits, so a Windows file was one line (found by scripts/fuzz config).
    public var sourceLines: [Substring] {
        unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { Substring($0) }
    }
}
