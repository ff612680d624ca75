"""Per-thread callgrind files (`valgrind --separate-threads=yes`), each named by its thread's
entry function, and their instruction totals. Shared by scripts/engine-figures.sh and
scripts/http-callgrind.sh, which give their own roles: (name, entry function pattern).

The entry functions are found by name, so the binary measured must keep its symbols and should
carry debug info: both scripts build `cargo build --profile profiling` (Cargo.toml), the
release build with `debug = 1`; the release profile itself has no debug info."""
import re
import subprocess


def role_of(path, roles):
    """`main` for the first thread; else the first of `roles` whose entry function is among
    the functions callgrind_annotate lists (a tokio worker is started from the blocking pool, so
    a role listed earlier wins over one listed later); else `other`."""
    if path.endswith("-01"):
        return "main"
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    lines = [line for line in ann.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
    for role, pattern in roles:
        if any(re.search(pattern, line) for line in lines):
            return role
    return "other"


def totals(paths, roles):
    """Instructions of the files in `paths`, summed by role."""
    sums = {}
    for path in paths:
        m = re.search(r"^(?:summary|totals):\s*(\d+)", open(path, errors="replace").read(), re.M)
        role = role_of(path, roles)
        sums[role] = sums.get(role, 0) + (int(m.group(1)) if m else 0)
    return sums
