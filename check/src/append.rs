//! Append-only logs of numbered records: did every record its writer saw
//! acknowledged survive, in order, byte for byte?
//!
//! A writer (client `c`) appends records `0, 1, 2, ...` to its own file,
//! each the line [`record`]`(c, seq)`. Its payload is a fixed function of
//! the client and the sequence number, so a reader that knows only those
//! two can tell a right record from a misplaced, stale or torn one.
//! [`check`] reads a file back: it counts the valid records from the start
//! and describes the first bytes that are not exactly the next record.

/// Bytes of a record's payload (the line is longer by its header and
/// newline).
const PAYLOAD_BYTES: usize = 100;
/// Bytes of unexpected content quoted in a description.
const QUOTED_BYTES: usize = 40;

/// Record `seq` of `client`: `c{client} r{seq:08} {payload}\n`, where the
/// payload is `PAYLOAD_BYTES` characters derived from both numbers.
pub fn record(client: u64, seq: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut line = format!("c{client} r{seq:08} ");
    let mut x = crate::splitmix(client.rotate_left(32) ^ seq);
    for i in 0..PAYLOAD_BYTES {
        if i % 8 == 0 {
            x = crate::splitmix(x);
        }
        line.push(char::from(
            DIGITS[((x >> ((i % 8) * 8)) & 0xff) as usize % 36],
        ));
    }
    line.push('\n');
    line
}

/// What [`check`] found in one client's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReport {
    /// Valid records in a row from record 0.
    pub present: u64,
    /// Acknowledged records that are not among them.
    pub lost: u64,
    /// The first bytes after the valid records that are not exactly the
    /// next record: garbage, a hole, a wrong or repeated record, a torn
    /// one. `None` when the file ends right after the valid records.
    pub corrupt: Option<String>,
}

impl AppendReport {
    /// Nothing acknowledged is missing and nothing is corrupt.
    pub fn is_ok(&self) -> bool {
        self.lost == 0 && self.corrupt.is_none()
    }
}

/// Checks `content`, the file of `client`, which saw records
/// `0..acknowledged` acknowledged (fsync returned OK). Records past those may
/// or may not be there; nothing else may.
pub fn check(client: u64, content: &[u8], acknowledged: u64) -> AppendReport {
    let mut pos = 0;
    let mut seq = 0;
    let mut corrupt = None;
    while pos < content.len() {
        let want = record(client, seq);
        let rest = &content[pos..];
        if rest.starts_with(want.as_bytes()) {
            pos += want.len();
            seq += 1;
        } else {
            corrupt = Some(mismatch(client, seq, pos, rest, want.as_bytes()));
            break;
        }
    }
    AppendReport {
        present: seq,
        lost: acknowledged.saturating_sub(seq),
        corrupt,
    }
}

/// Describes `rest` (at byte `pos`), which should have started with
/// record `seq`, `want`.
fn mismatch(client: u64, seq: u64, pos: usize, rest: &[u8], want: &[u8]) -> String {
    let first_diff = rest
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(rest.len().min(want.len()));
    let at = format!("at byte {pos}, where record {seq} should start");
    let found = quote(rest);
    if rest.len() < want.len() && want.starts_with(rest) {
        return format!(
            "torn record {at}: the file ends after {} of its {} bytes",
            rest.len(),
            want.len()
        );
    }
    let span = &rest[..rest.len().min(want.len())];
    if span.iter().all(|b| *b == 0) {
        return format!(
            "{} zero bytes (a hole) {at}: a later write landed where earlier ones are missing",
            span.len()
        );
    }
    match header(rest) {
        Some((c, n)) if c != client => {
            format!("a record of client {c} (record {n}) {at}: {found}")
        }
        Some((_, n)) if n < seq => {
            format!("record {n} again (a duplicate) {at}: {found}")
        }
        Some((_, n)) if n > seq => {
            format!("record {n} {at}: records {seq}..{n} are missing from the middle: {found}")
        }
        Some(_) => format!("record {seq} has wrong bytes from its byte {first_diff} {at}: {found}"),
        None => format!("unexpected bytes {at} (differing from byte {first_diff}): {found}"),
    }
}

/// The client and sequence number of a record header `c{client} r{seq} `.
fn header(bytes: &[u8]) -> Option<(u64, u64)> {
    let line = bytes.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line.get(..line.len().min(64))?).ok()?;
    let mut parts = text.splitn(3, ' ');
    let client = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let seq = parts.next()?.strip_prefix('r')?.parse().ok()?;
    Some((client, seq))
}

/// Up to `QUOTED_BYTES` of `bytes`, escaped.
fn quote(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(QUOTED_BYTES)];
    let more = if bytes.len() > QUOTED_BYTES {
        "..."
    } else {
        ""
    };
    format!("\"{}\"{more}", head.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(client: u64, seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        seqs.into_iter()
            .flat_map(|s| record(client, s).into_bytes())
            .collect()
    }

    fn report(present: u64, lost: u64) -> AppendReport {
        AppendReport {
            present,
            lost,
            corrupt: None,
        }
    }

    /// Checks `content` and returns the corruption it must report.
    fn corrupt(client: u64, content: &[u8], acknowledged: u64) -> (u64, String) {
        let r = check(client, content, acknowledged);
        match r.corrupt {
            Some(c) => (r.present, c),
            None => panic!("no corruption found: {r:?}"),
        }
    }

    #[test]
    fn records_are_deterministic_lines_of_fixed_shape() {
        let a = record(3, 17);
        assert!(a.starts_with("c3 r00000017 "), "{a}");
        assert!(a.ends_with('\n') && a.matches('\n').count() == 1);
        assert_eq!(a.len(), "c3 r00000017 ".len() + PAYLOAD_BYTES + 1);
        assert_eq!(a, record(3, 17));
        // The payload depends on both numbers.
        let payload = |c, s| record(c, s)[13..].to_string();
        assert_ne!(payload(3, 17), payload(3, 18));
        assert_ne!(payload(3, 17), payload(4, 17));
    }

    #[test]
    fn intact_files_pass() {
        assert_eq!(check(1, b"", 0), report(0, 0));
        assert_eq!(check(1, &file(1, 0..5), 5), report(5, 0));
        // Unacknowledged records may be there too.
        assert_eq!(check(1, &file(1, 0..5), 3), report(5, 0));
        assert!(check(1, &file(1, 0..5), 5).is_ok());
    }

    #[test]
    fn missing_acknowledged_records_are_lost() {
        assert_eq!(check(2, &file(2, 0..3), 5), report(3, 2));
        assert_eq!(check(2, b"", 4), report(0, 4));
        assert!(!check(2, b"", 4).is_ok());
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut f = file(1, 0..3);
        f.extend_from_slice(b"hello\n");
        f.extend(file(1, 3..5));
        let (present, why) = corrupt(1, &f, 5);
        assert_eq!(present, 3);
        assert!(why.contains("record 3") && why.contains("hello"), "{why}");
        // A flipped byte inside a payload.
        let mut f = file(1, 0..4);
        let at = record(1, 0).len() * 2 + 50;
        f[at] ^= 1;
        let (present, why) = corrupt(1, &f, 4);
        assert_eq!(present, 2);
        assert!(why.contains("wrong bytes from its byte 50"), "{why}");
    }

    #[test]
    fn a_torn_last_record_is_corrupt() {
        let mut f = file(4, 0..3);
        f.truncate(f.len() - 10);
        let (present, why) = corrupt(4, &f, 2);
        assert_eq!(present, 2);
        assert!(why.starts_with("torn record at byte"), "{why}");
        assert_eq!(check(4, &f, 3).lost, 1);
    }

    #[test]
    fn duplicates_holes_gaps_and_strangers_are_corrupt() {
        let f = file(1, [0, 1, 2, 2, 3]);
        let (present, why) = corrupt(1, &f, 4);
        assert_eq!(present, 3);
        assert!(why.contains("record 2 again (a duplicate)"), "{why}");

        let f = file(1, [0, 1, 3]);
        let (_, why) = corrupt(1, &f, 2);
        assert!(why.contains("records 2..3 are missing"), "{why}");

        let mut f = file(1, 0..2);
        f.extend(vec![0u8; record(1, 2).len()]);
        f.extend(file(1, 3..4));
        let (present, why) = corrupt(1, &f, 2);
        assert_eq!(present, 2);
        assert!(why.contains("a hole"), "{why}");

        let mut f = file(1, 0..1);
        f.extend(file(9, 1..2));
        let (_, why) = corrupt(1, &f, 1);
        assert!(why.contains("a record of client 9"), "{why}");
    }
}
