//! Who is signed in: argon2 password hashes, random session tokens kept only as hashes, and a
//! per-session CSRF token every form must carry back. Pure (no SQL, no HTTP) so each rule is
//! tested on its own; the pages and the database wire them.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE: &str = "medbox_session";

/// How long a session lasts without signing in again (a shift, with margin).
pub const SESSION_HOURS: i64 = 12;

/// Wrong passwords under one name, since its last sign-in, that stop further tries...
pub const SIGN_IN_FAILURES: i64 = 5;
/// ...for this many minutes after the last of them: five guesses per quarter hour, whoever
/// asks, and the name's owner waits at most that long after an attack stops.
pub const SIGN_IN_WINDOW_MINUTES: i32 = 15;

/// The shortest password the portal accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// What is wrong with `password` on its own (its length), if anything: the one rule every
/// password the portal sets follows, whoever sets it.
pub fn too_short(password: &str) -> Option<String> {
    (password.chars().count() < MIN_PASSWORD_CHARS)
        .then(|| format!("a password needs at least {MIN_PASSWORD_CHARS} characters"))
}

/// What is wrong with `new` as the next password of someone whose password is `current`, with
/// `repeated` typed again to confirm it; None: nothing.
pub fn new_password_problem(current: &str, new: &str, repeated: &str) -> Option<String> {
    if let Some(short) = too_short(new) {
        Some(short)
    } else if new != repeated {
        Some("the new password and its repetition differ".into())
    } else if new == current {
        Some("the new password is the current one".into())
    } else {
        None
    }
}

/// The roles a person may have: the appliance's command roles that people send in.
pub const ROLES: &[&str] = &["caregiver", "nurse", "clinician", "pharmacist"];

/// What is wrong with a person an administrator is adding, if anything. A login name is also
/// the actor the appliances record, so it is kept to letters, digits and `._-`.
pub fn new_person_problem(
    username: &str,
    role: &str,
    display_name: &str,
    password: &str,
) -> Option<String> {
    let name_ok = (2..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !name_ok {
        Some("a login name is 2 to 64 of a-z, 0-9, '.', '_' and '-'".into())
    } else if !ROLES.contains(&role) {
        Some(format!("the role must be one of {}", ROLES.join(", ")))
    } else if display_name.trim().is_empty() || display_name.chars().count() > 100 {
        Some("the name shown needs 1 to 100 characters".into())
    } else {
        too_short(password)
    }
}

/// Whether a name with `recent_failures` wrong passwords in the window may try again: the
/// password is then not even checked, so a guesser learns nothing from a throttled try.
pub fn sign_in_throttled(recent_failures: i64) -> bool {
    recent_failures >= SIGN_IN_FAILURES
}

/// Random bytes from the operating system, hex-encoded: session tokens and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source");
    hex(&bytes)
}

/// What the sessions table keeps of a token: its SHA-256, so a leaked table signs nobody in.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// An argon2id hash (PHC string, with its own random salt and parameters) of `password`.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .expect("the operating system's random source");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// Whether `password` matches `hash`; a malformed hash matches nothing.
pub fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the username is unknown, so a wrong name takes as long as
/// a wrong password and the login form does not tell which names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("no such person"))
}

/// Whether a form's CSRF token is the session's, compared in constant time.
pub fn csrf_matches(session: &str, form: &str) -> bool {
    !session.is_empty()
        && session.len() == form.len()
        && session
            .bytes()
            .zip(form.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The session token in a `Cookie` header, if any.
pub fn session_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for a session: not readable by scripts, never sent with a request
/// another site starts (SameSite=Strict), and `Secure` when the portal is served over TLS.
pub fn set_cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_HOURS * 3600,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_persons_name_role_and_password_are_checked_before_anything_is_stored() {
        let ok = |u, r, n, p| new_person_problem(u, r, n, p);
        assert_eq!(ok("dana.k", "nurse", "Dana K", "twelve chars!"), None);
        for bad_name in ["", "d", "Dana", "dana k", "dana;drop", "système"] {
            let p = ok(bad_name, "nurse", "Dana", "twelve chars!").expect(bad_name);
            assert!(p.contains("login name"), "{p}");
        }
        assert!(ok("dana", "admin", "Dana", "twelve chars!").is_some_and(|p| p.contains("role")));
        assert!(ok("dana", "nurse", "  ", "twelve chars!").is_some_and(|p| p.contains("name")));
        assert!(ok("dana", "nurse", "Dana", "short").is_some_and(|p| p.contains("at least")));
    }

    #[test]
    fn a_new_password_is_long_enough_typed_twice_alike_and_not_the_old_one() {
        let old = "correct horse battery";
        assert!(new_password_problem(old, "short", "short")
            .unwrap()
            .contains("at least 12"));
        assert!(
            new_password_problem(old, "a long new phrase", "a long new phrasf")
                .unwrap()
                .contains("differ")
        );
        assert!(new_password_problem(old, old, old)
            .unwrap()
            .contains("current one"));
        assert_eq!(
            new_password_problem(old, "a long new phrase", "a long new phrase"),
            None
        );
    }

    #[test]
    fn sign_in_throttle_allows_four_wrong_passwords_and_stops_the_try_after_the_fifth() {
        assert!(!sign_in_throttled(SIGN_IN_FAILURES - 1));
        assert!(sign_in_throttled(SIGN_IN_FAILURES));
    }

    #[test]
    fn a_password_matches_only_its_own_hash_and_each_hash_has_its_own_salt() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(password_matches(&h, "correct horse"));
        assert!(!password_matches(&h, "correct horse "));
        assert!(!password_matches(&h, ""));
        assert_ne!(h, hash_password("correct horse"), "salted");
        assert!(!password_matches("not a hash", "correct horse"));
        assert!(!password_matches(decoy_hash(), ""));
    }

    #[test]
    fn a_session_token_is_random_and_stored_only_as_its_hash() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(token_hash(&a), a);
        assert_eq!(token_hash(&a), token_hash(&a));
    }

    #[test]
    fn a_form_is_accepted_only_with_the_sessions_own_csrf_token() {
        let t = random_token();
        assert!(csrf_matches(&t, &t));
        assert!(!csrf_matches(&t, &random_token()));
        assert!(!csrf_matches(&t, &t[..63]));
        assert!(!csrf_matches(&t, ""));
        assert!(!csrf_matches("", ""), "no session token, no form");
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_anything_else_is_ignored() {
        let t = random_token();
        let header = format!("theme=dark; {COOKIE}={t}; other=1");
        assert_eq!(session_cookie(&header), Some(t.as_str()));
        assert_eq!(session_cookie("theme=dark"), None);
        assert_eq!(session_cookie(&format!("{COOKIE}=")), None);
        assert_eq!(session_cookie(&format!("{COOKIE}=<script>")), None);
        let set = set_cookie(&t, true);
        for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set_cookie(&t, false).contains("Secure"));
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
