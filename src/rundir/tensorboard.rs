//! TensorBoard event files: every run writes its curves (training loss and learning rate,
//! gradient norms when traced, dev metrics and [CLS] geometry at each evaluation) under
//! `RUN/tensorboard/`, so that `tensorboard --logdir runs/` shows each run folder as a run and
//! a sweep's runs overlay.
//!
//! The format is TensorFlow's record file of `Event` protocol buffers (`tensorflow/core/util/
//! event.proto`, `summary.proto`): each record is its length (u64, little-endian), the masked
//! CRC-32C of those 8 bytes, the bytes, and their masked CRC-32C. The messages are declared
//! with `prost`; only the fields written are declared (scalars as `simple_value`).
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folder of a run's event files.
pub const DIR: &str = "tensorboard";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of a file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A member of the `value` oneof in TensorBoard's proto: written even when 0.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// TensorFlow's masked CRC-32C of a record's parts.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record: length, its CRC, the bytes, their CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Reads the events of a file this module wrote (or any TensorFlow record file of events),
/// checking every CRC.
pub fn read_events(bytes: &[u8]) -> std::result::Result<Vec<Event>, String> {
    use prost::Message;
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or_else(|| format!("a record header cut short at byte {at}"))?;
        let len_bytes: [u8; 8] = head[..8].try_into().map_err(|_| "header")?;
        let crc = u32::from_le_bytes(head[8..12].try_into().map_err(|_| "header")?);
        if crc != masked_crc(&len_bytes) {
            return Err(format!(
                "the length of the record at byte {at} fails its CRC"
            ));
        }
        let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| "length")?;
        let data = bytes
            .get(at + 12..at + 12 + len)
            .ok_or_else(|| format!("the record at byte {at} is cut short"))?;
        let tail = bytes
            .get(at + 12 + len..at + 16 + len)
            .ok_or_else(|| format!("the record at byte {at} has no CRC"))?;
        if u32::from_le_bytes(tail.try_into().map_err(|_| "crc")?) != masked_crc(data) {
            return Err(format!("the record at byte {at} fails its CRC"));
        }
        events.push(Event::decode(data).map_err(|e| format!("record at byte {at}: {e}"))?);
        at += 16 + len;
    }
    Ok(events)
}

/// The event file of one process's part of a run (a resumed run adds a file; TensorBoard
/// reads a folder's files as one run).
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `RUN/tensorboard/`, named as TensorFlow names them
    /// (`events.out.tfevents.SECONDS.HOST.PID`, host `clsnorm`).
    pub fn create(run_dir: &Path) -> Result<EventWriter> {
        let dir = run_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let wall = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.clsnorm.{}",
            wall as u64,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file };
        w.write(&Event {
            wall_time: wall,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        use prost::Message;
        let bytes = record(&event.encode_to_vec());
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Scalars `values` (tag, value) at update `step`, now; non-finite values are skipped.
    pub fn scalars(&mut self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let value: Vec<Value> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| Value {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
            })
            .collect();
        if value.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_tensorflows_masked_crc() {
        let r = record(b"");
        assert_eq!(r.len(), 16);
        let events = read_events(&record(&{
            use prost::Message;
            Event {
                wall_time: 1.5,
                step: 3,
                what: Some(What::Summary(Summary {
                    value: vec![Value {
                        tag: "train/loss".into(),
                        simple_value: Some(0.0),
                    }],
                })),
            }
            .encode_to_vec()
        }))
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].step, 3);
        let mut bad = record(b"abc");
        bad[13] ^= 1;
        assert!(read_events(&bad).unwrap_err().contains("CRC"));
    }
}
