//! A float32 matrix in NumPy's `.npy` format (version 1.0), written a block of rows at a time:
//! the header is rewritten after every block, so the file is a whole `[rows, cols]` matrix of
//! the rows written so far at any moment, and one that stops early loads with `numpy.load`.
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Header bytes, magic included: room for any row count, and a multiple of 64 as the format
/// asks (so the data is aligned for memory mapping).
const HEADER_BYTES: usize = 128;

pub struct NpyWriter {
    path: PathBuf,
    file: BufWriter<File>,
    cols: usize,
    rows: u64,
}

impl NpyWriter {
    /// Starts `[0, cols]` in `file` (created by the caller, who decides what may be replaced).
    pub fn new(path: &Path, file: File, cols: usize) -> Result<Self> {
        let mut w = NpyWriter {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            cols,
            rows: 0,
        };
        w.write_header()?;
        Ok(w)
    }

    fn header(&self) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
            self.rows, self.cols
        );
        let mut h = b"\x93NUMPY\x01\x00".to_vec();
        h.extend_from_slice(&((HEADER_BYTES - 10) as u16).to_le_bytes());
        h.extend_from_slice(dict.as_bytes());
        h.resize(HEADER_BYTES - 1, b' ');
        h.push(b'\n');
        h
    }

    fn write_header(&mut self) -> Result<()> {
        let h = self.header();
        let io = |e| Error::io(&self.path, e);
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(&h).map_err(io)?;
        self.file.seek(SeekFrom::End(0)).map_err(io)?;
        self.file.flush().map_err(io)
    }

    /// Appends `values.len() / cols` rows (row-major), then counts them in the header.
    pub fn append(&mut self, values: &[f32]) -> Result<()> {
        if self.cols == 0 || !values.len().is_multiple_of(self.cols) {
            return Err(Error::Invalid(format!(
                "{}: {} values are not whole rows of {}",
                self.path.display(),
                values.len(),
                self.cols
            )));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.rows += (values.len() / self.cols) as u64;
        self.write_header()
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_counts_the_rows_and_keeps_the_data_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let mut w = NpyWriter::new(&path, File::create(&path).unwrap(), 3).unwrap();
        w.append(&[1.0, 2.0, 3.0]).unwrap();
        w.append(&[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).unwrap();
        assert!(w.append(&[1.0]).is_err());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (3, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        let data: Vec<f32> = bytes[10 + len..]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(data, (1..=9).map(|v| v as f32).collect::<Vec<_>>());
    }
}
