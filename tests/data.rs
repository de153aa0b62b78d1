//! Data readers: every GLUE layout (fixtures for the tasks not in shared/data/glue), custom
//! files, and errors that name file, line and problem.
mod common;

use std::path::Path;

use clsnorm::data::read::{infer_classes, read_rows};
use clsnorm::data::{
    glue_task, read_dataset, read_split, Format, Label, LabelSpace, ReadOptions, TaskSpec,
};
use clsnorm::Error;

use common::{write_file as write, SKIP, STRICT};

fn err_of(r: clsnorm::Result<clsnorm::data::Dataset>) -> (usize, String) {
    match r {
        Err(Error::Data { line, msg, .. }) => (line, msg),
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn task_names_are_case_insensitive_with_aliases() {
    for (n, want) in [
        ("rte", "RTE"),
        ("RTE", "RTE"),
        ("sst-2", "SST-2"),
        ("sst2", "SST-2"),
        ("STS-B", "STS-B"),
        ("stsb", "STS-B"),
        ("CoLA", "CoLA"),
        ("mnli", "MNLI"),
        ("qqp", "QQP"),
        ("qnli", "QNLI"),
        ("wnli", "WNLI"),
        ("mrpc", "MRPC"),
    ] {
        assert_eq!(glue_task(n).unwrap().name, want);
    }
    assert!(glue_task("squad").is_none());
}

#[test]
fn glue_fixtures_for_every_format() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    // QQP: 6 columns, label is_duplicate.
    let qqp = write(d, "QQP/dev.tsv", b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tHow do I \"cook\"?\tWhat is cooking?\t0\n4\t5\t6\tWhy?\tWhy not?\t1\n");
    let ds = read_dataset(&qqp, &glue_task("qqp").unwrap(), STRICT).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(
        ds.examples[0].text, "How do I \"cook\"?",
        "no quote handling"
    );
    assert_eq!(ds.examples[1].label, Some(Label::Class(1)));
    // MNLI: 3 classes, gold_label among many columns; dev files matched and mismatched.
    let mnli = glue_task("mnli").unwrap();
    assert_eq!(
        mnli.dev_files
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["dev_matched", "dev_mismatched"]
    );
    let header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n";
    let row = |s1: &str, s2: &str, g: &str| {
        format!("0\t1\t2\tfiction\t(x)\t(y)\t(X)\t(Y)\t{s1}\t{s2}\t{g}\t{g}\t{g}\t{g}\t{g}\t{g}\n")
    };
    let body = format!(
        "{header}{}{}{}",
        row("A man.", "A person.", "entailment"),
        row("A cat.", "No cat.", "contradiction"),
        row("A dog.", "A big dog.", "neutral")
    );
    let p = write(d, "MNLI/dev_matched.tsv", body.as_bytes());
    let ds = read_dataset(&p, &mnli, STRICT).unwrap();
    let labels: Vec<_> = ds.examples.iter().map(|e| e.label).collect();
    assert_eq!(
        labels,
        [
            Some(Label::Class(1)),
            Some(Label::Class(0)),
            Some(Label::Class(2))
        ]
    );
    assert_eq!(ds.examples[2].text_pair.as_deref(), Some("A big dog."));
    // QNLI and WNLI.
    let p = write(
        d,
        "QNLI/dev.tsv",
        b"index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tnot_entailment\n",
    );
    assert_eq!(
        read_dataset(&p, &glue_task("qnli").unwrap(), STRICT)
            .unwrap()
            .examples[0]
            .label,
        Some(Label::Class(1))
    );
    let p = write(
        d,
        "WNLI/dev.tsv",
        b"index\tsentence1\tsentence2\tlabel\n0\tI saw it.\tIt was seen.\t1\n",
    );
    assert_eq!(
        read_dataset(&p, &glue_task("wnli").unwrap(), STRICT)
            .unwrap()
            .examples[0]
            .label,
        Some(Label::Class(1))
    );
    // CoLA: no header; MRPC: a BOM before the header; STS-B: float scores; CRLF line ends.
    let p = write(
        d,
        "CoLA/dev.tsv",
        b"gj04\t1\t\tThe sailors rode.\r\ngj04\t0\t*\tRode sailors the.\r\n",
    );
    let ds = read_dataset(&p, &glue_task("cola").unwrap(), STRICT).unwrap();
    assert_eq!(ds.examples[1].text, "Rode sailors the.");
    assert_eq!(ds.examples[1].label, Some(Label::Class(0)));
    let p = write(
        d,
        "MRPC/dev.tsv",
        "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said.\tHe stated.\n"
            .as_bytes(),
    );
    let ds = read_dataset(&p, &glue_task("mrpc").unwrap(), STRICT).unwrap();
    assert_eq!(
        (ds.examples[0].text.as_str(), ds.examples[0].line),
        ("He said.", 2)
    );
    let p = write(d, "STS-B/dev.tsv", b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tg\tf\t2012\t0\tn\tn\tA man.\tA guy.\t4.750\n");
    assert_eq!(
        read_dataset(&p, &glue_task("sts-b").unwrap(), STRICT)
            .unwrap()
            .examples[0]
            .label,
        Some(Label::Score(4.75))
    );
}

#[test]
fn shared_glue_files_read_with_their_official_sizes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue");
    if !dir.is_dir() {
        panic!("{} is missing (the project's shared data)", dir.display());
    }
    for (task, train, dev) in [
        ("SST-2", 67349, 872),
        ("CoLA", 8551, 1043),
        ("MRPC", 3668, 408),
        ("RTE", 2490, 277),
        ("STS-B", 5749, 1500),
    ] {
        let spec = glue_task(task).unwrap();
        let (t, d) = spec.paths(Some(&dir.join(task)));
        assert_eq!(
            read_split(&t, &spec, STRICT).unwrap().examples.len(),
            train,
            "{task} train"
        );
        assert_eq!(
            read_split(&d[0].1, &spec, STRICT).unwrap().examples.len(),
            dev,
            "{task} dev"
        );
    }
}

#[test]
fn bad_rows_name_the_line_and_can_be_skipped() {
    let d = tempfile::tempdir().unwrap();
    let rte = glue_task("rte").unwrap();
    let h = "index\tsentence1\tsentence2\tlabel\n";
    let cases: Vec<(Vec<u8>, usize, &str)> = vec![
        (
            format!("{h}0\ta\tb\tentailment\n1\tonly three\tentailment\n").into_bytes(),
            3,
            "expected 4 tab-separated columns",
        ),
        (
            format!("{h}0\ta\tb\tmaybe\n").into_bytes(),
            2,
            "unknown label \"maybe\" (expected one of: \"entailment\", \"not_entailment\")",
        ),
        (
            format!("{h}0\t  \tb\tentailment\n").into_bytes(),
            2,
            "empty text in column \"sentence1\"",
        ),
        (
            [h.as_bytes(), b"0\ta\xff\xfe\tb\tentailment\n"].concat(),
            2,
            "invalid UTF-8",
        ),
        (
            format!("{h}0\ta\u{feff}b\tb\tentailment\n").into_bytes(),
            2,
            "byte-order mark",
        ),
    ];
    for (body, line, want) in cases {
        let p = write(d.path(), "RTE/train.tsv", &body);
        let (l, msg) = err_of(read_dataset(&p, &rte, STRICT));
        assert_eq!(l, line, "{msg}");
        assert!(msg.contains(want), "'{msg}' lacks '{want}'");
        // The same file with --skip-bad-rows: counted, not fatal (when a good row remains).
        let good = format!("{h}9\tx\ty\tentailment\n");
        let mixed = [good.as_bytes(), &body[h.len()..]].concat();
        let p = write(d.path(), "RTE/train.tsv", &mixed);
        let ds = read_dataset(&p, &rte, SKIP).unwrap();
        assert_eq!(
            (ds.examples.len(), ds.skipped),
            (1 + usize::from(line == 3), 1),
            "{want}"
        );
    }
    let p = write(
        d.path(),
        "RTE/train.tsv",
        b"index\tsentence\tlabel\n0\ta\tentailment\n",
    );
    let (l, msg) = err_of(read_dataset(&p, &rte, STRICT));
    assert!(
        l == 1 && msg.contains("header has no column \"sentence1\""),
        "{msg}"
    );
    let p = write(d.path(), "RTE/train.tsv", b"\n\n");
    assert!(err_of(read_dataset(&p, &rte, STRICT)).1.contains("empty"));
    let stsb = glue_task("stsb").unwrap();
    let p = write(d.path(), "s.tsv", b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tg\tf\t2012\t0\tn\tn\tA.\tB.\thigh\n");
    assert!(err_of(read_dataset(&p, &stsb, STRICT))
        .1
        .contains("regression target \"high\" is not a finite number"));
    let missing = read_dataset(&d.path().join("nope.tsv"), &rte, STRICT).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("nope.tsv"));
}

fn custom(
    format: Format,
    file: &Path,
    regression: bool,
    header: bool,
    cols: (&str, Option<&str>, &str),
) -> TaskSpec {
    let mut spec = TaskSpec::custom(
        "mine",
        format,
        header,
        cols.0,
        cols.1,
        cols.2,
        regression,
        &file.to_string_lossy(),
        None,
    )
    .unwrap();
    if !regression {
        let rows = read_rows(file, &spec, STRICT).unwrap().rows;
        spec.labels = LabelSpace::Classes(infer_classes(file, &rows).unwrap());
    }
    spec
}

#[test]
fn custom_csv_jsonl_and_tsv_files() {
    let d = tempfile::tempdir().unwrap();
    let csv = write(d.path(), "a.csv", b"id,review,stars\n1,\"Great, really \"\"great\"\"\",pos\n2,\"multi\nline\",neg\n3,meh,neutral\n");
    let spec = custom(Format::Csv, &csv, false, true, ("review", None, "stars"));
    assert_eq!(
        spec.labels,
        LabelSpace::Classes(vec!["neg".into(), "neutral".into(), "pos".into()])
    );
    let ds = read_dataset(&csv, &spec, STRICT).unwrap();
    assert_eq!(ds.examples[0].text, "Great, really \"great\"");
    assert_eq!(ds.examples[1].text, "multi\nline");
    assert_eq!(
        ds.examples[2].line, 5,
        "CSV line numbers count the embedded newline"
    );
    let short = write(
        d.path(),
        "s.csv",
        b"id,review,stars
1,fine,pos
2,no stars
",
    );
    let (l, msg) = err_of(read_dataset(&short, &spec, STRICT));
    assert!(
        l == 3 && msg.contains("expected 3 comma-separated columns"),
        "{msg}"
    );
    let jl = write(d.path(), "a.jsonl", b"{\"q\": \"x?\", \"a\": \"y\", \"y\": 10}\n\n{\"q\": \"z?\", \"a\": \"w\", \"y\": 2}\n{\"q\": \"k\", \"a\": \"v\", \"y\": 2}\n");
    let spec = custom(Format::Jsonl, &jl, false, true, ("q", Some("a"), "y"));
    assert_eq!(
        spec.labels,
        LabelSpace::Classes(vec!["2".into(), "10".into()]),
        "numeric labels sort numerically"
    );
    let ds = read_dataset(&jl, &spec, STRICT).unwrap();
    assert_eq!(ds.examples[0].label, Some(Label::Class(1)));
    assert_eq!(ds.examples[1].line, 3);
    let bad = write(
        d.path(),
        "b.jsonl",
        b"{\"q\": \"x\", \"a\": \"y\", \"y\": 1}\n{\"q\": \"x\"\n",
    );
    let spec = custom(Format::Jsonl, &jl, false, true, ("q", Some("a"), "y"));
    let (l, msg) = err_of(read_dataset(&bad, &spec, STRICT));
    assert!(l == 2 && msg.contains("invalid JSON"), "{msg}");
    let reg = write(d.path(), "r.tsv", b"s\t0.5\nt\t1.25\n");
    let spec = custom(Format::Tsv, &reg, true, false, ("0", None, "1"));
    let ds = read_dataset(&reg, &spec, STRICT).unwrap();
    assert_eq!(ds.examples[1].label, Some(Label::Score(1.25)));
    assert!(
        TaskSpec::custom("x", Format::Tsv, false, "text", None, "1", false, "f", None).is_err(),
        "names need a header"
    );
    // Prediction input without a label column.
    let unl = write(d.path(), "u.tsv", b"sentence\ngood stuff\n");
    let sst = glue_task("sst2").unwrap();
    let ds = read_dataset(
        &unl,
        &sst,
        ReadOptions {
            skip_bad_rows: false,
            require_label: false,
        },
    )
    .unwrap();
    assert_eq!(ds.examples[0].label, None);
    assert!(read_dataset(&unl, &sst, STRICT).is_err());
}
