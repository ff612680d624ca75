//! Tests of the helpers themselves: calendar math, PostgreSQL URL handling and the parsing of
//! the server's `listening on` line. They run in every test binary that includes `common`.

use super::server::parse_listen_line;
use super::*;

#[test]
fn calendar_math() {
    assert_eq!(unix(1970, 1, 1, 0, 0, 0), 0);
    assert_eq!(fmt_ts(unix(2026, 11, 28, 21, 0, 0)), "2026-11-28T21:00:00Z");
    assert_eq!(
        parse_ts_ms("2026-11-28T21:00:00.5Z"),
        unix(2026, 11, 28, 21, 0, 0) * 1000 + 500
    );
    assert_eq!(
        add_months(unix(2027, 1, 31, 0, 0, 0), 1),
        unix(2027, 2, 28, 0, 0, 0)
    );
    assert_eq!(
        add_months(unix(2027, 1, 31, 0, 0, 0), 2),
        unix(2027, 3, 31, 0, 0, 0)
    );
    assert_eq!(
        add_months(unix(2028, 1, 31, 0, 0, 0), 1),
        unix(2028, 2, 29, 0, 0, 0)
    );
    assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    let u = PgUrl::parse("postgres://postgres@127.0.0.1:5432/test?sslmode=disable");
    assert_eq!(u.socket(), ("127.0.0.1".to_string(), 5432));
    assert_eq!(
        u.with_database("tg_t_1")
            .with_host_port("127.0.0.1:7")
            .to_string(),
        "postgres://postgres@127.0.0.1:7/tg_t_1?sslmode=disable"
    );
    let u = PgUrl::parse("postgresql://u:p@localhost");
    assert_eq!((u.socket().1, u.database.as_str()), (5432, ""));
    assert_eq!(
        u.with_database("d").to_string(),
        "postgresql://u:p@localhost/d"
    );
    assert_eq!(
        PgUrl::parse("postgres://[::1]:6543/x").socket(),
        ("::1".into(), 6543)
    );
    assert_eq!(
        parse_listen_line(
            "2026-11-28T21:00:00Z  INFO tollgate: listening on http://127.0.0.1:4242"
        ),
        Some("127.0.0.1:4242".into())
    );
}
