//! The archive's migrations are embedded at compile time; a new one must rebuild the crate.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
