//! Positions in the log.

use std::fmt;
use std::str::FromStr;

/// A partition's index within its topic, from 0.
pub type PartitionId = u32;
/// An event's position within its partition, from 0, without gaps.
pub type Offset = u64;

/// Where a reader of several partitions stands: for each partition, the next offset to read.
///
/// Its text form, used as the Server-Sent Events `id:` and `Last-Event-ID`, is
/// `partition:offset` pairs joined by commas, e.g. `0:12,1:0,2:7`. A partition absent from a
/// cursor starts wherever the reader's default start is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    positions: Vec<(PartitionId, Offset)>,
}

impl Cursor {
    pub fn new() -> Self {
        Cursor::default()
    }

    pub fn get(&self, partition: PartitionId) -> Option<Offset> {
        self.positions
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
    }

    pub fn set(&mut self, partition: PartitionId, next_offset: Offset) {
        match self.positions.iter_mut().find(|(p, _)| *p == partition) {
            Some(entry) => entry.1 = next_offset,
            None => {
                self.positions.push((partition, next_offset));
                self.positions.sort_unstable();
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (PartitionId, Offset)> + '_ {
        self.positions.iter().copied()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (partition, offset)) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{partition}:{offset}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid position {text:?}: expected partition:offset pairs separated by commas, such as 0:12,1:7"
)]
pub struct InvalidCursor {
    pub text: String,
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCursor {
            text: text.to_owned(),
        };
        let mut cursor = Cursor::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (partition, offset) = pair.split_once(':').ok_or_else(invalid)?;
            let partition = partition.trim().parse().map_err(|_| invalid())?;
            let offset = offset.trim().parse().map_err(|_| invalid())?;
            if cursor.get(partition).is_some() {
                return Err(invalid());
            }
            cursor.set(partition, offset);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_text_round_trips() {
        let mut cursor = Cursor::new();
        cursor.set(2, 7);
        cursor.set(0, 12);
        cursor.set(2, 8);
        assert_eq!(cursor.to_string(), "0:12,2:8");
        assert_eq!("0:12,2:8".parse::<Cursor>().unwrap(), cursor);
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::new());
        for bad in ["0", "a:1", "0:-1", "0:1,0:2", "0:1;1:2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
