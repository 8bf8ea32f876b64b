//! `outpost-step install` and `outpost-step receive` as processes: the installed copy runs, and
//! trees archived by the `tar` crate and by GNU tar (gnu, pax and ustar formats) come out the
//! same on the other side, while hostile archives are refused without a byte outside the target.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{code, run, wrapper};

/// Pipes `archive` into `outpost-step receive <dir> [args…]`.
fn receive(archive: &[u8], dir: &Path, args: &[&str]) -> Output {
    let mut cmd = wrapper(&["receive"]);
    cmd.arg(dir).args(args);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the wrapper starts");
    let mut stdin = child.stdin.take().expect("piped");
    // A refused archive may stop reading early; a broken pipe then is expected.
    let _ = stdin.write_all(archive);
    drop(stdin);
    child.wait_with_output().expect("the wrapper ends")
}

/// Every entry under `root`: path → `dir 755`, `file 644 <content>`, `link -> <target>`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("listable")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let rel = String::from_utf8_lossy(
                path.strip_prefix(root)
                    .expect("under root")
                    .as_os_str()
                    .as_bytes(),
            )
            .into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readable link");
                format!("link -> {}", target.display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                format!("dir {mode:o}")
            } else {
                let content = std::fs::read(&path).expect("readable file");
                format!("file {mode:o} {}", String::from_utf8_lossy(&content))
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A source tree with what a checkout holds: nested and empty directories, modes, an empty
/// file, relative and absolute symlinks, a read-only directory, a non-UTF-8 name, and (when
/// `long`) a path longer than the 255 bytes ustar can hold.
fn source_tree(root: &Path, long: bool) {
    let w = |rel: &str, content: &str, mode: u32| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
        std::fs::write(&path, content).expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("mode");
    };
    w("README.md", "# hello\n", 0o644);
    w("scripts/build.sh", "#!/bin/sh\necho build\n", 0o755);
    w("secret/key", "k", 0o600);
    w("empty", "", 0o644);
    std::fs::create_dir_all(root.join("empty-dir")).expect("dir");
    std::os::unix::fs::symlink("scripts/build.sh", root.join("build")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("absolute-link")).expect("symlink");
    std::os::unix::fs::symlink("../outside", root.join("scripts/up")).expect("symlink");
    let odd = std::ffi::OsStr::from_bytes(b"odd-\xff-name");
    std::fs::write(root.join(odd), "odd").expect("written");
    // Between 100 and 255 bytes: ustar's prefix field, or a long-name extension.
    let medium = format!("{}/{}/file.txt", "m".repeat(60), "n".repeat(60));
    w(&medium, "medium", 0o644);
    if long {
        let deep = format!("{}/file.txt", vec!["d".repeat(90); 4].join("/"));
        w(&deep, "deep", 0o640);
    }
    w("readonly/inside", "ro", 0o444);
    std::fs::set_permissions(
        root.join("readonly"),
        std::fs::Permissions::from_mode(0o555),
    )
    .expect("mode");
}

/// The `tar` crate's archive of `root` (GNU headers, long names by `L` entries).
fn tar_crate_archive(root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", root).expect("archived");
    b.into_inner().expect("finished")
}

#[test]
fn a_tree_archived_by_the_tar_crate_comes_out_the_same() {
    let src = tempfile::tempdir().expect("temp dir");
    source_tree(src.path(), true);
    let archive = tar_crate_archive(src.path());
    let dst = tempfile::tempdir().expect("temp dir");
    let target = dst.path().join("workspace");
    let marker = dst.path().join("receive.done");
    let out = receive(
        &archive,
        &target,
        &["--marker", marker.to_str().expect("UTF-8")],
    );
    assert_eq!(
        code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&target), tree(src.path()));
    let text = std::fs::read_to_string(&marker).expect("marker written");
    let parsed = outpost_steprules::Marker::parse(&text).expect("a valid marker");
    assert_eq!(parsed, outpost_steprules::Marker::exited(0));
    assert!(text.starts_with("state=success exit=0 entries="), "{text}");
    // File mtimes come across (build tools compare them).
    let mtime = |root: &Path| {
        std::fs::metadata(root.join("README.md"))
            .expect("metadata")
            .mtime()
    };
    assert_eq!(mtime(&target), mtime(src.path()));
}

#[test]
fn trees_archived_by_gnu_tar_come_out_the_same() {
    if Command::new("tar").arg("--version").output().is_err() {
        println!("skipped: no `tar` command on this machine");
        return;
    }
    for (format, long) in [
        ("gnu", true),
        ("pax", true),
        ("ustar", false),
        ("v7", false),
    ] {
        let src = tempfile::tempdir().expect("temp dir");
        source_tree(src.path(), long);
        if format == "v7" {
            // v7 has neither long names nor a prefix: a plain tree only.
            for big in std::fs::read_dir(src.path()).expect("listable") {
                let path = big.expect("entry").path();
                if path.file_name().is_some_and(|n| n.len() > 50) {
                    std::fs::remove_dir_all(&path).expect("removed");
                }
            }
        }
        // A hard link, which GNU tar stores as a link entry.
        std::fs::hard_link(src.path().join("README.md"), src.path().join("README.copy"))
            .expect("hard link");
        let out = Command::new("tar")
            .args([&format!("--format={format}"), "-C"])
            .arg(src.path())
            .args(["-cf", "-", "."])
            .output()
            .expect("tar runs");
        assert!(out.status.success(), "tar --format={format}: {out:?}");
        let dst = tempfile::tempdir().expect("temp dir");
        let got = receive(&out.stdout, dst.path(), &[]);
        assert_eq!(
            code(got.status),
            0,
            "{format}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(tree(dst.path()), tree(src.path()), "format {format}");
        let links = std::fs::metadata(dst.path().join("README.copy"))
            .expect("extracted")
            .nlink();
        assert_eq!(links, 2, "{format}: the hard link is a link again");
    }
}

/// One pax `path` record, its length counting its own digits.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len();
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

#[test]
fn pax_paths_override_the_header_name() {
    let long = format!("{}/pax.txt", "p".repeat(200));
    let records = pax_record("path", &long);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(records.len() as u64);
    h.set_path("PaxHeaders/pax.txt").expect("short path");
    h.set_cksum();
    b.append(&h, records.as_bytes()).expect("appended");
    let mut h = tar::Header::new_ustar();
    h.set_path("truncated-name").expect("short path");
    h.set_size(3);
    h.set_mode(0o640);
    h.set_cksum();
    b.append(&h, &b"pax"[..]).expect("appended");
    let archive = b.into_inner().expect("finished");
    let dst = tempfile::tempdir().expect("temp dir");
    let out = receive(&archive, dst.path(), &[]);
    assert_eq!(
        code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = tree(dst.path());
    assert_eq!(
        t.get(&long).map(String::as_str),
        Some("file 640 pax"),
        "{t:?}"
    );
    assert!(!dst.path().join("truncated-name").exists());
}

/// An archive of one entry whose raw name (and link target) are set byte for byte, past the
/// checks the `tar` crate makes when it writes.
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: tar::EntryType, link: &[u8]) {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name);
    old.linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).expect("appended");
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside() {
    use tar::EntryType::{Link, Regular, Symlink};
    type Case<'a> = (&'a [(&'a [u8], tar::EntryType, &'a [u8])], &'a str);
    let cases: &[Case] = &[
        (
            &[(b"../evil", Regular, b"")],
            "entry `../evil` is refused: its path contains `..`",
        ),
        (
            &[(b"a/../../evil", Regular, b"")],
            "entry `a/../../evil` is refused: its path contains `..`",
        ),
        (
            &[(b"/tmp/evil", Regular, b"")],
            "entry `/tmp/evil` is refused: its path is absolute",
        ),
        (
            &[(b"up", Symlink, b".."), (b"up/evil", Regular, b"")],
            "entry `up/evil` is refused: it goes through the symbolic link `up`",
        ),
        (
            &[(b"hard", Link, b"../evil")],
            "entry `hard` is refused: its link target contains `..`",
        ),
        (
            &[(b"up", Symlink, b"/"), (b"hard", Link, b"up/etc/passwd")],
            "entry `hard` is refused: its link target goes through the symbolic link `up`",
        ),
        (
            &[(b"f", Regular, b""), (b"f/evil", Regular, b"")],
            "entry `f/evil` is refused: `f` is not a directory",
        ),
    ];
    for (entries, message) in cases {
        let outer = tempfile::tempdir().expect("temp dir");
        let target = outer.path().join("ws");
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries.iter() {
            raw_entry(&mut b, name, *kind, link);
        }
        let archive = b.into_inner().expect("finished");
        let out = receive(&archive, &target, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(out.status), 125, "{message}: {stderr}");
        assert!(
            stderr.contains(message),
            "expected `{message}` in: {stderr}"
        );
        assert!(
            stderr.starts_with("outpost-step: invalid tar stream at byte "),
            "{stderr}"
        );
        assert!(!outer.path().join("evil").exists(), "{message}");
    }
}

#[test]
fn corrupt_and_truncated_streams_are_clear_errors() {
    let src = tempfile::tempdir().expect("temp dir");
    std::fs::write(src.path().join("a.txt"), "a".repeat(2000)).expect("written");
    let archive = tar_crate_archive(src.path());

    let mut corrupt = archive.clone();
    // The second header (`./a.txt` follows the `.` directory entry): one byte of its name.
    corrupt[512 + 3] ^= 0x01;
    let dst = tempfile::tempdir().expect("temp dir");
    let out = receive(&corrupt, dst.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out.status), 125, "{stderr}");
    assert!(
        stderr.contains("invalid tar stream at byte 512: header checksum mismatch"),
        "{stderr}"
    );

    let out = receive(&archive[..512 + 512 + 1000], dst.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out.status), 125, "{stderr}");
    assert!(
        stderr.contains("the stream ended inside an entry's data (1000 of 2000 bytes)"),
        "{stderr}"
    );

    let out = receive(b"", dst.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out.status), 125, "{stderr}");
    assert!(
        stderr.contains("ended before the end-of-archive marker"),
        "{stderr}"
    );
}

#[test]
fn install_copies_the_running_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin_dir = dir.path().join("bin");
    let out = run(&["install", bin_dir.to_str().expect("UTF-8")]);
    assert_eq!(
        code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = bin_dir.join("outpost-step");
    let mode = std::fs::metadata(&installed)
        .expect("installed")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(&installed).expect("readable"),
        std::fs::read(common::bin()).expect("readable")
    );
    let out = Command::new(&installed)
        .arg("version")
        .output()
        .expect("the copy runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("outpost-step {}", env!("CARGO_PKG_VERSION"))
    );
    // Installing again replaces the copy; nothing else is left in the directory.
    let out = run(&["install", bin_dir.to_str().expect("UTF-8")]);
    assert_eq!(code(out.status), 0);
    let names: Vec<_> = std::fs::read_dir(&bin_dir)
        .expect("listable")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["outpost-step"]);
}
