//! Golden-file tests of the target DDL generator: one table with every type the lab uses, in
//! each mode. Run with `UPDATE_GOLDEN=1` to rewrite the files after an intended change.

use std::path::PathBuf;

use dmsguard_pipeline::catalogue::{SourceColumn, SourceTable, SourceTypeKind};
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::ddl::{
    create_table, strip_encodings, CompressionFile, DdlError, DdlOptions,
};
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;

fn column(name: &str, type_name: &str, udt: &str, kind: SourceTypeKind) -> SourceColumn {
    SourceColumn {
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        udt_name: udt.to_owned(),
        kind,
        element_type: (kind == SourceTypeKind::Array)
            .then(|| udt.trim_start_matches('_').to_owned()),
        not_null: false,
        char_max_length: None,
        numeric_precision: None,
        numeric_scale: None,
    }
}

/// The lab's awkward table, as `Catalogue::load_source` reads it.
fn awkward() -> SourceTable {
    use SourceTypeKind::{Array, Base, Enum};
    let mut columns = vec![
        column("id", "bigint", "int8", Base),
        column("flag", "boolean", "bool", Base),
        column("doc", "jsonb", "jsonb", Base),
        column("tags", "text[]", "_text", Array),
        column("ref", "uuid", "uuid", Base),
        column("at", "timestamp with time zone", "timestamptz", Base),
        column("local_at", "timestamp without time zone", "timestamp", Base),
        column("day", "date", "date", Base),
        column("amount", "numeric(12,2)", "numeric", Base),
        column("ratio", "double precision", "float8", Base),
        column("small", "smallint", "int2", Base),
        column("note", "text", "text", Base),
        column("status", "order_status", "order_status", Enum),
        column("maybe", "integer", "int4", Base),
        column("MixedCase", "character varying(10)", "varchar", Base),
        column("blob", "bytea", "bytea", Base),
        column("code", "character(3)", "bpchar", Base),
        column("huge_text", "character varying(20000)", "varchar", Base),
        column("wide_number", "numeric(50,4)", "numeric", Base),
        column("any_number", "numeric", "numeric", Base),
        column("opens", "time without time zone", "time", Base),
        column("took", "interval", "interval", Base),
        column("score", "real", "float4", Base),
        column("raw_json", "json", "json", Base),
    ];
    columns[0].not_null = true;
    columns[1].not_null = true;
    columns[8].numeric_precision = Some(12);
    columns[8].numeric_scale = Some(2);
    columns[14].char_max_length = Some(10);
    columns[16].char_max_length = Some(3);
    columns[17].char_max_length = Some(20000);
    columns[18].numeric_precision = Some(50);
    columns[18].numeric_scale = Some(4);
    SourceTable {
        name: QualifiedName::parse("public.awkward").unwrap(),
        columns,
        primary_key: vec!["id".to_owned()],
    }
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the committed golden file. With `UPDATE_GOLDEN=1` a differing file
/// is rewritten and the test still fails: a run that changed a golden file never passes, the
/// next run (without the variable) compares against the reviewed file.
fn check_golden(name: &str, actual: &str) {
    let path = golden(name);
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if actual == expected {
        return;
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        panic!(
            "{name}: rewrote {}; review the diff and run again without UPDATE_GOLDEN",
            path.display()
        );
    }
    assert_eq!(
        actual, expected,
        "{name} differs from its golden file {} (after an intended change: UPDATE_GOLDEN=1, then review)",
        path.display()
    );
}

fn generate(options: &DdlOptions) -> String {
    let source = awkward();
    create_table(&source, &source.name, "id", options)
        .unwrap()
        .sql
}

#[test]
fn recommended_types_and_default_encodings() {
    let sql = generate(&DdlOptions::default());
    check_golden("awkward.redshift.sql", &sql);
    is_valid_redshift_sql(&strip_encodings(&sql)).unwrap();
}

#[test]
fn dms_compatible_types() {
    let sql = generate(&DdlOptions {
        dms_compatible: true,
        ..DdlOptions::default()
    });
    check_golden("awkward.dms.sql", &sql);
    is_valid_redshift_sql(&strip_encodings(&sql)).unwrap();
}

#[test]
fn postgres_check_has_no_redshift_only_clauses() {
    let sql = generate(&DdlOptions {
        postgres_check: true,
        ..DdlOptions::default()
    });
    check_golden("awkward.postgres.sql", &sql);
    for clause in [
        "ENCODE",
        "SORTKEY",
        "DISTKEY",
        "DISTSTYLE",
        "SUPER",
        "VARBYTE",
    ] {
        assert!(!sql.contains(clause), "{clause} left in:\n{sql}");
    }
}

#[test]
fn encodings_from_an_analyze_compression_file() {
    let file = CompressionFile::load(&golden("awkward.compression.csv")).unwrap();
    let source = awkward();
    let ddl = create_table(
        &source,
        &source.name,
        "id",
        &DdlOptions {
            compression: Some(file),
            ..DdlOptions::default()
        },
    )
    .unwrap();
    check_golden("awkward.compression.sql", &ddl.sql);
    assert!(ddl.sql.contains("\"status\" VARCHAR(64) ENCODE BYTEDICT"));
    assert!(ddl
        .warnings
        .iter()
        .any(|w| w.contains("no row for") && w.contains("raw_json")));
}

#[test]
fn warnings_where_redshift_limits_bite() {
    let ddl = create_table(&awkward(), &awkward().name, "id", &DdlOptions::default()).unwrap();
    let find = |column: &str| {
        ddl.warnings
            .iter()
            .any(|w| w.starts_with(&format!("{column}:")))
    };
    assert!(
        find("huge_text"),
        "varchar over 65535 bytes: {:?}",
        ddl.warnings
    );
    assert!(find("wide_number"), "precision over 38");
    assert!(find("note"), "unbounded text");
    assert!(!find("doc") && !find("tags"), "SUPER holds json and arrays");
    let dms = create_table(
        &awkward(),
        &awkward().name,
        "id",
        &DdlOptions {
            dms_compatible: true,
            ..DdlOptions::default()
        },
    )
    .unwrap();
    for column in ["doc", "tags", "raw_json"] {
        assert!(
            dms.warnings
                .iter()
                .any(|w| w.starts_with(&format!("{column}:"))),
            "json and arrays without SUPER: {column}"
        );
    }
}

#[test]
fn unmappable_type_is_refused_naming_table_and_column() {
    let mut source = awkward();
    source
        .columns
        .push(column("price", "money", "money", SourceTypeKind::Base));
    let err = create_table(&source, &source.name, "id", &DdlOptions::default()).unwrap_err();
    assert!(matches!(err, DdlError::Unmappable { .. }));
    assert_eq!(
        err.to_string(),
        "public.awkward.price: cannot map source type `money` to Redshift"
    );
    let mut source = awkward();
    source
        .columns
        .push(column("pos", "point", "point", SourceTypeKind::Other));
    assert!(create_table(&source, &source.name, "id", &DdlOptions::default()).is_err());
}

#[test]
fn composite_key_gets_automatic_distribution_and_missing_id_is_refused() {
    let mut source = awkward();
    source.primary_key = vec!["id".to_owned(), "small".to_owned()];
    let sql = create_table(&source, &source.name, "id", &DdlOptions::default())
        .unwrap()
        .sql;
    assert!(sql.contains("DISTSTYLE AUTO\nSORTKEY (\"id\");"), "{sql}");
    assert!(sql.contains("PRIMARY KEY (\"id\", \"small\")"));
    assert!(matches!(
        create_table(&source, &source.name, "nope", &DdlOptions::default()),
        Err(DdlError::IdColumnMissing { .. })
    ));
    let mut source = awkward();
    source
        .columns
        .push(column("mixedcase", "integer", "int4", SourceTypeKind::Base));
    assert!(matches!(
        create_table(&source, &source.name, "id", &DdlOptions::default()),
        Err(DdlError::CaseCollision { .. })
    ));
}
