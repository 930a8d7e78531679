//! Queries parsed from URL parameters and evaluated by a scan.

use proteus_projections::query::{QUERY_LIMIT_MAX, ScanOrder};
use proteus_projections::{Condition, Op, Order, Query, Sort, SortBy};
use serde_json::json;

#[test]
fn parameters_parse_to_queries() {
    let query = Query::from_params([
        ("filter", "status:eq:placed"),
        ("filter", "total:gte:10.5"),
        ("filter", "shipping.city:in:Oslo,Lima,7"),
        ("filter", "/zip:eq:\"0150\""),
        ("filter", "coupon:exists"),
        ("filter", "name:prefix:12"),
        ("filter", "note:ne:a:b"),
        ("sort", "-total"),
        ("limit", "20"),
    ])
    .unwrap();
    assert_eq!(
        query.filter,
        vec![
            Condition::new("/status", Op::Eq, json!("placed")),
            Condition::new("/total", Op::Gte, json!(10.5)),
            Condition::new("/shipping/city", Op::In, json!(["Oslo", "Lima", 7])),
            Condition::new("/zip", Op::Eq, json!("0150")),
            Condition::new("/coupon", Op::Exists, json!(true)),
            Condition::new("/name", Op::Prefix, json!("12")),
            Condition::new("/note", Op::Ne, json!("a:b")),
        ]
    );
    assert_eq!(
        query.sort,
        Some(Sort {
            by: SortBy::Path("/total".into()),
            order: Order::Desc
        })
    );
    assert_eq!(query.limit, 20);
    let by_key = Query::from_params([("sort", "$key:desc")]).unwrap();
    assert_eq!(
        by_key.sort,
        Some(Sort {
            by: SortBy::Key,
            order: Order::Desc
        })
    );
}

#[test]
fn bad_parameters_say_which() {
    let field = |params: &[(&str, &str)]| Query::from_params(params.iter().copied()).unwrap_err();
    let error = field(&[("filter", "status")]);
    assert_eq!(error.field, "filter[0]");
    assert!(error.message.contains("PATH:OP:VALUE"), "{error}");
    let error = field(&[("filter", "a:eq:1"), ("filter", "status:like:x")]);
    assert_eq!(error.field, "filter[1]");
    assert!(
        error.message.contains("unknown operator \"like\""),
        "{error}"
    );
    assert_eq!(field(&[("filter", "a:eq")]).field, "filter[0]");
    assert_eq!(field(&[("filter", "a:exists:maybe")]).field, "filter[0]");
    assert_eq!(field(&[("limit", "0")]).field, "limit");
    assert_eq!(
        field(&[("limit", &(QUERY_LIMIT_MAX + 1).to_string())]).field,
        "limit"
    );
    assert_eq!(field(&[("limit", "ten")]).field, "limit");
    assert_eq!(field(&[("page", "2")]).field, "page");
    assert_eq!(field(&[("cursor", "%%%")]).field, "cursor");
}

#[test]
fn scans_page_by_keyset() {
    let query = Query {
        sort: Some(Sort {
            by: SortBy::Path("/n".into()),
            order: Order::Desc,
        }),
        limit: 2,
        ..Query::default()
    };
    let docs = [
        ("a", json!({"n": 1})),
        ("b", json!({"n": 3})),
        ("c", json!({})),
        ("d", json!({"n": 3})),
    ];
    let mut scan = query.scan().unwrap();
    assert_eq!(scan.order(), ScanOrder::Any);
    for (key, doc) in &docs {
        scan.offer(key, doc.clone());
    }
    let page = scan.finish();
    let keys: Vec<&str> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["d", "b"]);
    let next = Query {
        cursor: page.next_cursor,
        ..query
    };
    let mut scan = next.scan().unwrap();
    for (key, doc) in &docs {
        scan.offer(key, doc.clone());
    }
    let page = scan.finish();
    let keys: Vec<&str> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "c"],
        "missing values sort smallest, so last when descending"
    );
    assert_eq!(page.next_cursor, None);
}
