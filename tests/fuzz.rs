//! Property-based fuzzing of everything that parses files a user hands us: the data readers
//! (TSV, CSV, JSONL, GLUE layouts), `config.json`, tokenizer files and sweep configs. Each
//! property feeds random (and randomly mutated valid) input and requires an `Ok` or an `Err`,
//! never a panic. `PROPTEST_CASES` sets the number of cases per property (256 in CI; see
//! docs/reliability.md for the long run).
mod common;

use std::path::Path;

use clsnorm::data::{glue_task, read_dataset, Format, TaskSpec};
use clsnorm::encoder::BertConfig;
use clsnorm::sweep::SweepConfig;
use clsnorm::tokenize::TextTokenizer;
use proptest::prelude::*;

use common::{write_file as write, SKIP, STRICT};

/// Bytes that look like tabular data: fragments of valid rows, separators, quotes, newlines,
/// CR, BOMs, invalid UTF-8 and arbitrary characters, in random order.
fn tabular_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\t".to_vec()),
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just("\u{feff}".as_bytes().to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"{\"text\": \"a\", \"label\": 1}\n".to_vec()),
        Just(b"sentence\tlabel\n".to_vec()),
        Just(b"index\tsentence1\tsentence2\tlabel\n".to_vec()),
        Just(b"entailment".to_vec()),
        Just(b"0".to_vec()),
        Just(b"1".to_vec()),
        Just(b"3.5".to_vec()),
        Just(b"nan".to_vec()),
        "[ -~]{0,12}".prop_map(String::into_bytes),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn custom_specs(file: &Path) -> Vec<TaskSpec> {
    let f = file.to_string_lossy();
    let mut specs = Vec::new();
    for format in [Format::Tsv, Format::Csv, Format::Jsonl] {
        for (header, text, pair, label) in [
            (true, "text", None, "label"),
            (true, "sentence1", Some("sentence2"), "label"),
            (false, "0", None, "1"),
            (false, "1", Some("2"), "0"),
        ] {
            for regression in [false, true] {
                if let Ok(s) = TaskSpec::custom(
                    "fuzz", format, header, text, pair, label, regression, &f, None,
                ) {
                    specs.push(s);
                }
            }
        }
    }
    specs
}

proptest! {
    #[test]
    fn data_readers_never_panic(body in tabular_bytes()) {
        let d = tempfile::tempdir().unwrap();
        let file = write(d.path(), "f.txt", &body);
        for spec in custom_specs(&file) {
            for opts in [STRICT, SKIP] {
                let _ = read_dataset(&file, &spec, opts);
            }
        }
        for task in ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"] {
            let spec = glue_task(task).unwrap();
            for opts in [STRICT, SKIP] {
                let _ = read_dataset(&file, &spec, opts);
            }
        }
    }

    #[test]
    fn model_config_parsing_never_panics(
        keys in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "hidden_size", "num_attention_heads", "num_hidden_layers",
                    "intermediate_size", "vocab_size", "max_position_embeddings",
                    "type_vocab_size", "hidden_act", "layer_norm_eps",
                    "hidden_dropout_prob", "position_embedding_type", "model_type",
                ]),
                prop_oneof![
                    any::<i64>().prop_map(|v| v.to_string()),
                    any::<f64>().prop_map(|v| format!("{v:e}")),
                    "\"[a-z_]{0,10}\"",
                    Just("null".to_string()),
                    Just("[]".to_string()),
                    Just("1e400".to_string()),
                ],
            ),
            0..8,
        ),
        junk in "[ -~]{0,16}",
    ) {
        let d = tempfile::tempdir().unwrap();
        let body: Vec<String> = keys.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        for text in [format!("{{{}}}", body.join(", ")), format!("{{{}{junk}", body.join(","))] {
            let p = write(d.path(), "config.json", text.as_bytes());
            if let Ok(cfg) = BertConfig::from_file(&p) {
                // What loads has passed validation: the shapes it implies are usable.
                prop_assert!(cfg.hidden_size > 0 && cfg.num_attention_heads > 0);
                prop_assert_eq!(cfg.hidden_size % cfg.num_attention_heads, 0);
            }
        }
    }

    #[test]
    fn tokenizer_loading_and_encoding_never_panic(
        vocab in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##s", "the", ""]).prop_map(String::from),
                any::<String>(),
            ],
            0..30,
        ),
        lower in any::<bool>(),
        config_junk in prop::option::of("[ -~]{0,20}"),
        text in any::<String>(),
        max_len in 0usize..40,
    ) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "vocab.txt", vocab.join("\n").as_bytes());
        let config = match &config_junk {
            Some(j) => j.clone(),
            None => format!("{{\"do_lower_case\": {lower}}}"),
        };
        write(d.path(), "tokenizer_config.json", config.as_bytes());
        if let Ok(tok) = TextTokenizer::load(d.path(), max_len) {
            if let Ok(e) = tok.encode(&text, Some(&text)) {
                prop_assert!(e.input_ids.len() <= max_len.max(3));
            }
        }
    }

    #[test]
    fn sweep_config_parsing_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("name = \"s\"".to_string()),
                Just("tasks = [\"RTE\", \"MRPC\"]".to_string()),
                Just("seeds = [1, 2]".to_string()),
                Just("[[norm]]".to_string()),
                Just("name = \"isobn\"".to_string()),
                Just("[args]".to_string()),
                Just("epochs = [1, 2]".to_string()),
                Just("lr = -1".to_string()),
                "[a-z-]{1,8} = [0-9\"\\[\\], ]{0,10}",
                "[ -~]{0,20}",
            ],
            0..12,
        ),
    ) {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "sweep.toml", lines.join("\n").as_bytes());
        if let Ok(cfg) = SweepConfig::from_file(&p) {
            let _ = cfg.expand(&p);
        }
    }
}
