//! Which medication a record belongs to, whatever a caregiver later renames.
//!
//! A dose's identity must survive edits: "Metformin" and "metformin " are one medication, and a
//! dose given before a rename still counts after it. Two keys identify a medication's records:
//! its *normalised name* (letter case and runs of whitespace do not matter) and its *carousel
//! slot* (the pills physically given). A record matches a medication when either key does, so a
//! rename keeps its slot's history and a slot move keeps its name's. The slot key errs on the
//! safe side: after two medications swap slots, a recent dose of one may hold back the other
//! until its spacing has passed (a refusal with a reason, never a second dose).
//!
//! The built-in high-alert list ([`is_high_alert_weekly`]) lives here too, because it is also a
//! question of what a name means, not of what the file says.

/// The normalised form of a medication name: trimmed, inner whitespace collapsed to one space,
/// lower case. Two names with the same normalised form are the same medication.
pub fn normalise(name: &str) -> String {
    // Asked for every record at every planning round: one allocation, words lowered in place
    // when they are ASCII (as nearly every medication name is).
    let mut out = String::with_capacity(name.len());
    for word in name.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if word.is_ascii() {
            out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(&word.to_lowercase());
        }
    }
    out
}

/// Whether two names name the same medication.
pub fn same(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        // The same words, letter case aside: what the normalised forms would say, without
        // building them.
        let (mut x, mut y) = (a.split_whitespace(), b.split_whitespace());
        loop {
            match (x.next(), y.next()) {
                (None, None) => return true,
                (Some(p), Some(q)) if p.eq_ignore_ascii_case(q) => {}
                _ => return false,
            }
        }
    }
    normalise(a) == normalise(b)
}

const HIGH_ALERT_WEEKLY: &str = include_str!("data/high-alert-weekly.txt");

/// Whether a medication name is on the built-in list of weekly high-alert medications (at least
/// oral methotrexate by its common names): any word of the normalised name, or the whole of it,
/// matches a listed name.
pub fn is_high_alert_weekly(name: &str) -> bool {
    let name = normalise(name);
    let words: Vec<&str> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    HIGH_ALERT_WEEKLY
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|listed| words.contains(&listed) || name == listed)
}

/// Why a medication name cannot be used, if it cannot: blank, too long, or carrying control or
/// bidirectional-override characters that make a label read differently from what it is.
pub fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("must not be blank".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Some(format!("is longer than {MAX_NAME_CHARS} characters"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || is_bidi_control(*c)) {
        return Some(format!(
            "contains the invisible character U+{:04X}; type the name as printed on the label",
            u32::from(c)
        ));
    }
    None
}

/// The longest medication name accepted (labels are short; a huge name is an attack on logs).
pub const MAX_NAME_CHARS: usize = 100;

fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    ) || matches!(c, '\u{200B}'..='\u{200D}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differing_only_in_case_or_spacing_are_one_medication() {
        assert!(same("Metformin", "metformin"));
        assert!(same("  Metformin   XR ", "metformin xr"));
        assert!(!same("Metformin", "Metformin XR"));
    }

    /// The plain definition the fast paths must agree with.
    fn normalise_plainly(name: &str) -> String {
        name.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest::proptest! {
        #[test]
        fn the_fast_identity_agrees_with_lowering_and_collapsing_whitespace(
            a in "[ \t]{0,2}[A-Za-zÄÖÜäöüΣσς/0-9.-]{1,8}([ \t\u{a0}]{1,3}[A-Za-zÄΣσ0-9]{0,6}){0,3}[ ]{0,2}",
            b in "[ \t]{0,2}[A-Za-zÄÖÜäöüΣσς/0-9.-]{1,8}([ \t\u{a0}]{1,3}[A-Za-zÄΣσ0-9]{0,6}){0,3}[ ]{0,2}",
        ) {
            proptest::prop_assert_eq!(normalise(&a), normalise_plainly(&a));
            proptest::prop_assert_eq!(same(&a, &b), normalise_plainly(&a) == normalise_plainly(&b));
            // A name and its upper-cased, re-spaced spelling are the same medication.
            let respaced = format!("  {}  ", a.to_uppercase().split_whitespace().collect::<Vec<_>>().join("   "));
            proptest::prop_assert_eq!(same(&a, &respaced), normalise_plainly(&a) == normalise_plainly(&respaced));
        }
    }

    #[test]
    fn methotrexate_is_high_alert_by_any_common_name() {
        for name in [
            "Methotrexate",
            "METHOTREXATE 2.5 mg",
            "MTX",
            "Trexall",
            "methotrexate-sodium",
        ] {
            assert!(is_high_alert_weekly(name), "{name}");
        }
        for name in ["Metformin", "Folic acid", "Metoprolol"] {
            assert!(!is_high_alert_weekly(name), "{name}");
        }
    }

    #[test]
    fn blank_huge_and_bidi_names_are_refused() {
        assert!(name_problem(" ").is_some());
        assert!(name_problem(&"x".repeat(2_000_000)).is_some());
        assert!(name_problem("Metformin\u{202E}nimrofteM").is_some());
        assert!(name_problem("Meto\u{200B}prolol").is_some());
        assert!(name_problem("Co-careldopa 25/100").is_none());
    }
}
