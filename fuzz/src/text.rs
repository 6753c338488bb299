//! The plain-text input the plugin targets share, so their corpus can be real configs and
//! real bodies a person can read and write: sections split by a line `%%`, and HTTP-like
//! heads (a first line, then `name: value` lines).

/// The sections of `input`, split at each line that is exactly `%%`.
pub(crate) fn sections(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        match rest.find("\n%%\n") {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + 4..];
            }
            None => {
                out.push(rest);
                return out;
            }
        }
    }
}

/// A head: its first line (`GET /path?q` or `200`) and its headers, in order, names in
/// lower case. Header lines without `:` are ignored.
pub(crate) fn head(text: &str) -> (&str, Vec<(String, String)>) {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (first, headers)
}

/// `(name, value)` pairs as the harness takes them.
pub(crate) fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}
