/// The version both executables report.
public enum LBVersion {
    public static let current = "0.1.0"
}
