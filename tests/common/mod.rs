//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub mod hub_server;

/// The real all-MiniLM-L6-v2 installed by `scripts/setup.sh`.
pub fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/setup.sh first",
        dir.display()
    );
    dir
}

/// A small WordPiece vocabulary for tiny random models.
pub const TINY_VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat",
    "is", "good", "bad", "movie", "was", "not", "very", ".", ",", "##s", "##ing", "run", "it",
];

/// Writes `vocab.txt` (and an uncased `tokenizer_config.json`) into `dir`.
pub fn write_tiny_vocab(dir: &Path) {
    std::fs::write(dir.join("vocab.txt"), TINY_VOCAB.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"do_lower_case": true}"#,
    )
    .unwrap();
}

/// A BERT `tokenizer.json` for the tiny vocabulary, with `edit` applied.
pub fn tiny_tokenizer_json(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = TINY_VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    let mut t = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    edit(&mut t);
    t.to_string()
}

/// Asserts that two checkpoint folders hold bit-identical encoder and head weights.
pub fn same_checkpoint_weights(a: &Path, b: &Path) {
    for f in ["model.safetensors", "head.safetensors"] {
        let ta = clsnorm::encoder::weights::read_safetensors(&a.join(f)).unwrap();
        let tb = clsnorm::encoder::weights::read_safetensors(&b.join(f)).unwrap();
        assert_eq!(ta.len(), tb.len(), "{f}: tensor counts differ");
        for ((na, x), (nb, y)) in ta.iter().zip(&tb) {
            assert_eq!(na, nb);
            assert!(x.equal(y), "{f}: {na} differs");
        }
    }
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A random tiny BERT (2 layers, hidden 32) with the tiny vocabulary, saved in HF layout.
pub fn tiny_model_dir(dir: &Path, seed: i64) {
    let cfg = clsnorm::encoder::BertConfig::tiny(TINY_VOCAB.len() as i64, 32, 2, 4);
    let enc = clsnorm::encoder::Encoder::random(&cfg, tch::Device::Cpu, seed);
    enc.save(dir).unwrap();
    write_tiny_vocab(dir);
}

/// A learnable toy sentiment task in SST-2's format: label 1 iff the sentence says "good".
pub fn write_toy_sst(dir: &Path, n_train: usize, n_dev: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let fillers = [
        "the", "a", "cat", "dog", "movie", "was", "very", "it", "on", "mat",
    ];
    let mut make = |n: usize| {
        let mut s = String::from("sentence\tlabel\n");
        for i in 0..n {
            let label = i % 2;
            let mut words: Vec<&str> = (0..rng.random_range(2..6))
                .map(|_| fillers[rng.random_range(0..fillers.len())])
                .collect();
            let pos = rng.random_range(0..=words.len());
            words.insert(pos, if label == 1 { "good" } else { "bad" });
            s.push_str(&format!("{}\t{label}\n", words.join(" ")));
        }
        s
    };
    std::fs::create_dir_all(dir.join("SST-2")).unwrap();
    std::fs::write(dir.join("SST-2/train.tsv"), make(n_train)).unwrap();
    std::fs::write(dir.join("SST-2/dev.tsv"), make(n_dev)).unwrap();
}

/// libtorch's random generator is process-global, and the test harness runs tests on parallel
/// threads: tests that seed it hold this lock so that their draws are not interleaved.
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the `clsnorm` binary (no `GLUE_DIR` from the environment, warnings only).
pub fn clsnorm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args(args)
        .env_remove("GLUE_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `clsnorm finetune` on a custom data file used for training and evaluation (one epoch,
/// length 16, one thread, quiet).
pub fn finetune_custom<'a>(model: &'a Path, train: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        p(model),
        "--train-file",
        p(train),
        "--dev-file",
        p(train),
        "--output",
        p(out),
        "--epochs",
        "1",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]
}

/// Asserts success; returns stdout.
pub fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Asserts a clean failure: non-zero exit, no panic, and `want` in stderr.
pub fn fails(o: &std::process::Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure with '{want}'");
    assert!(
        !err.contains("panicked"),
        "a panic instead of an error:\n{err}"
    );
    assert!(err.contains(want), "stderr lacks '{want}':\n{err}");
}

/// A path as `&str` for command lines.
pub fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

/// Reading options: stop at the first bad row.
pub const STRICT: clsnorm::data::ReadOptions = clsnorm::data::ReadOptions {
    skip_bad_rows: false,
    require_label: true,
};
/// Reading options: count and skip bad rows.
pub const SKIP: clsnorm::data::ReadOptions = clsnorm::data::ReadOptions {
    skip_bad_rows: true,
    require_label: true,
};

/// Writes `body` to `dir/name` (creating folders); returns the path.
pub fn write_file(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, body).unwrap();
    p
}

/// Input limits wide enough for the tests' tiny models and hand-made batches.
pub const LIMITS: clsnorm::batch::InputLimits = clsnorm::batch::InputLimits {
    vocab_size: 1 << 20,
    type_vocab_size: Some(2),
    max_positions: 512,
    pad_token_id: None,
};

/// Every file under `dir` with its bytes (directories as empty entries), to prove nothing
/// changed.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), Vec::new());
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Asserts that two [`snapshot`]s are equal, naming the paths that differ (not their bytes).
pub fn assert_same(
    a: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    b: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
) {
    let keys: std::collections::BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    let differ: Vec<&PathBuf> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    assert!(differ.is_empty(), "changed: {differ:?}");
}

/// A column to write.
pub enum Col {
    Text(&'static str, Vec<String>),
    Int(&'static str, Vec<i64>),
    Float(&'static str, Vec<f32>),
    /// One text in every one of `n` rows (shared, not copied: a dictionary page holds it once).
    Repeated(&'static str, bytes::Bytes, usize),
}

/// Writes `cols` as one row group of a snappy-compressed parquet file, with the metadata
/// `datasets` writes when `class_names` names the classes of the `label` column.
pub fn write_parquet(path: &Path, cols: &[Col], class_names: Option<&[&str]>) {
    write_parquet_with(path, cols, class_names, parquet::basic::Compression::SNAPPY);
}

/// [`write_parquet`] with another codec.
pub fn write_parquet_with(
    path: &Path,
    cols: &[Col],
    class_names: Option<&[&str]>,
    compression: parquet::basic::Compression,
) {
    let fields: Vec<String> = cols
        .iter()
        .map(|c| match c {
            Col::Text(n, _) => format!("required binary {n} (UTF8);"),
            Col::Int(n, _) => format!("required int64 {n};"),
            Col::Float(n, _) => format!("required float {n};"),
            Col::Repeated(n, ..) => format!("required binary {n} (UTF8);"),
        })
        .collect();
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type(&format!(
            "message schema {{ {} }}",
            fields.join(" ")
        ))
        .unwrap(),
    );
    let meta = class_names.map(|names| {
        let info = serde_json::json!({"info": {"features": {
            "label": {"names": names, "_type": "ClassLabel"},
        }}});
        vec![parquet::file::metadata::KeyValue::new(
            "huggingface".into(),
            info.to_string(),
        )]
    });
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(compression)
        // Room for long repeated texts in one dictionary page (a decompression bomb's shape).
        .set_dictionary_page_size_limit(8 << 20)
        .set_key_value_metadata(meta)
        .build();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        parquet::file::writer::SerializedFileWriter::new(file, schema, std::sync::Arc::new(props))
            .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        match &cols[i] {
            Col::Text(_, v) => {
                let v: Vec<parquet::data_type::ByteArray> = v
                    .iter()
                    .map(|s| parquet::data_type::ByteArray::from(s.as_str()))
                    .collect();
                col.typed::<parquet::data_type::ByteArrayType>()
                    .write_batch(&v, None, None)
                    .unwrap();
            }
            Col::Int(_, v) => {
                col.typed::<parquet::data_type::Int64Type>()
                    .write_batch(v, None, None)
                    .unwrap();
            }
            Col::Float(_, v) => {
                col.typed::<parquet::data_type::FloatType>()
                    .write_batch(v, None, None)
                    .unwrap();
            }
            Col::Repeated(_, text, n) => {
                let v: Vec<parquet::data_type::ByteArray> = (0..*n)
                    .map(|_| parquet::data_type::ByteArray::from(text.clone()))
                    .collect();
                col.typed::<parquet::data_type::ByteArrayType>()
                    .write_batch(&v, None, None)
                    .unwrap();
            }
        }
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// A temporary folder with a tiny random BERT (`model`) and toy SST-2 data (`data`).
pub struct Setup {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub model: PathBuf,
    pub data: PathBuf,
}

/// [`Setup`]: the model drawn under [`torch_rng_lock`], 16 training and 8 dev rows.
pub fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("model");
    {
        let _g = torch_rng_lock();
        tiny_model_dir(&model, 3);
    }
    let data = root.join("glue");
    write_toy_sst(&data, 16, 8, 1);
    Setup {
        _tmp: tmp,
        root,
        model,
        data,
    }
}

/// The fixture folder of model family `family` (tokenizer, configs, transformers' golden values).
pub fn family_fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
}

/// The formula of `bench/golden/families.py`: parameter `t` of the sorted names, element `j`:
/// `sin(0.37 j + 1.3 t)`, scaled 0.1 around 1 for LayerNorm weights, 0.02 for biases, 0.05
/// otherwise. The names are clsnorm's: HF's, plus `pooler.dense` where clsnorm keeps the task
/// head's dense layer (ELECTRA, DistilBERT).
pub fn formula_weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let config = clsnorm::encoder::Families::builtin()
        .read_config(dir)
        .unwrap();
    config
        .expected_shapes()
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: i64 = shape.iter().product();
            let s = (tch::Tensor::arange(n, (tch::Kind::Double, tch::Device::Cpu)) * 0.37
                + 1.3 * t as f64)
                .sin();
            let v = if name.to_lowercase().ends_with("norm.weight") {
                s * 0.1 + 1.0
            } else if name.ends_with("bias") {
                s * 0.02
            } else {
                s * 0.05
            };
            (name, v.to_kind(tch::Kind::Float).reshape(shape.as_slice()))
        })
        .collect()
}

/// A model directory of `family` at `size`: the fixture's tokenizer and config, formula weights.
pub fn family_model_dir(root: &Path, family: &str, size: &str) -> PathBuf {
    let dir = root.join(format!("{family}-{size}"));
    std::fs::create_dir_all(&dir).unwrap();
    let fx = family_fixture(family);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fx.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(fx.join(size).join("config.json"), dir.join("config.json")).unwrap();
    let w = formula_weights(&dir);
    clsnorm::encoder::weights::write_safetensors(
        &dir.join(clsnorm::encoder::weights::SAFETENSORS_FILE),
        &w,
    )
    .unwrap();
    dir
}

/// A fake `sbatch` on PATH that records its arguments and prints a job id.
pub fn fake_sbatch(dir: &Path) -> String {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let sbatch = bin.join("sbatch");
    std::fs::write(
        &sbatch,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" >> \"$(dirname \"$0\")/calls\"\necho 4242\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A DeBERTa-v3-layout model folder (formula weights, vocabulary of the fixture's 600 pieces)
/// whose only tokenizer files are `spm.model` and `tokenizer_config.json`.
pub fn deberta_v3_spm_dir(root: &Path) -> PathBuf {
    let dir = root.join("deberta-v3-spm");
    std::fs::create_dir_all(&dir).unwrap();
    let fx = family_fixture("deberta-v2");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("small/config.json")).unwrap()).unwrap();
    config["vocab_size"] = 600.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let w = formula_weights(&dir);
    clsnorm::encoder::weights::write_safetensors(&dir.join("model.safetensors"), &w).unwrap();
    for f in ["spm.model", "tokenizer_config.json"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/spm/deberta-v3-unigram")
                .join(f),
            dir.join(f),
        )
        .unwrap();
    }
    dir
}
