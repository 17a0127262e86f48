//! The decode state of one sequence: the slots a graph declares ([`crate::graph::StateInfo`]),
//! sized from the graph, plus the position. A program is shared between sequences; each sequence
//! owns one of these.

use crate::error::{Error, Result};
use crate::graph::{Elem, StateInfo};

/// One slot's storage: float for the float executor, `i16` for the integer one.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotData {
    F32(Vec<f32>),
    I16(Vec<i16>),
}

impl SlotData {
    pub fn len(&self) -> usize {
        match self {
            SlotData::F32(v) => v.len(),
            SlotData::I16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn bytes(&self) -> usize {
        match self {
            SlotData::F32(v) => v.len() * 4,
            SlotData::I16(v) => v.len() * 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SequenceState {
    pos: usize,
    /// The most positions this state holds (growing slots are preallocated to it).
    context: usize,
    slots: Vec<SlotData>,
    infos: Vec<StateInfo>,
}

impl SequenceState {
    /// An empty state for a graph's slots, with room for `context` positions: windows start at
    /// zero (the zero point for integers), growing slots are allocated for the whole context up
    /// front so decoding never reallocates.
    pub fn new(states: &[StateInfo], context: usize) -> Self {
        let slots = states.iter().map(|s| fresh(s, context)).collect();
        Self {
            pos: 0,
            context,
            slots,
            infos: states.to_vec(),
        }
    }

    /// Positions consumed so far (the next row's position).
    pub fn len(&self) -> usize {
        self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
    pub fn context(&self) -> usize {
        self.context
    }

    /// Back to the empty state (keeps the allocations).
    pub fn reset(&mut self) {
        self.pos = 0;
        for (slot, info) in self.slots.iter_mut().zip(&self.infos) {
            if info.grows() {
                match slot {
                    SlotData::F32(v) => v.clear(),
                    SlotData::I16(v) => v.clear(),
                }
            } else {
                *slot = fresh(info, 0);
            }
        }
    }

    pub fn slots(&self) -> &[SlotData] {
        &self.slots
    }
    pub fn infos(&self) -> &[StateInfo] {
        &self.infos
    }

    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut SlotData {
        &mut self.slots[i]
    }

    /// Two slots at once (an attention layer's K and V).
    pub(crate) fn slot_pair_mut(&mut self, a: usize, b: usize) -> (&mut SlotData, &mut SlotData) {
        assert_ne!(a, b, "K and V must be distinct slots");
        if a < b {
            let (l, r) = self.slots.split_at_mut(b);
            (&mut l[a], &mut r[0])
        } else {
            let (l, r) = self.slots.split_at_mut(a);
            (&mut r[0], &mut l[b])
        }
    }

    /// Bytes allocated: windows, and K/V preallocated for the whole context.
    pub fn allocated_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match s {
                SlotData::F32(v) => v.capacity() * 4,
                SlotData::I16(v) => v.capacity() * 2,
            })
            .sum()
    }

    /// Bytes held by fixed windows (independent of the sequence length).
    pub fn window_bytes(&self) -> usize {
        self.held_bytes(false)
    }
    /// Bytes held by growing slots (K/V of the positions so far).
    pub fn kv_bytes(&self) -> usize {
        self.held_bytes(true)
    }
    fn held_bytes(&self, growing: bool) -> usize {
        self.slots
            .iter()
            .zip(&self.infos)
            .filter(|(_, i)| i.grows() == growing)
            .map(|(s, _)| s.bytes())
            .sum()
    }

    /// Errors unless this state was made for `states` and `rows` more positions fit.
    pub(crate) fn check(&self, states: &[StateInfo], rows: usize) -> Result<()> {
        if self.infos != states {
            return Err(Error::input(
                "the sequence state was not made for this model (use its new_state)",
            ));
        }
        if self.pos + rows > self.context {
            return Err(Error::ContextOverflow {
                tokens: self.pos + rows,
                max_new: 0,
                context: self.context,
            });
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, rows: usize) {
        self.pos += rows;
    }
}

fn fresh(s: &StateInfo, context: usize) -> SlotData {
    let zp = match s.elem {
        Elem::Q(q) => q.zero_point as i16,
        _ => 0,
    };
    let n = if s.grows() { 0 } else { s.numel(0) };
    let cap = if s.grows() { context * s.width() } else { n };
    match s.elem {
        Elem::Q(_) => {
            let mut v = Vec::with_capacity(cap);
            v.resize(n, zp);
            SlotData::I16(v)
        }
        _ => {
            let mut v = Vec::with_capacity(cap);
            v.resize(n, 0.0);
            SlotData::F32(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{fixed, Dim};
    use crate::quant::params::ActQuant;

    fn slots(elem: Elem) -> Vec<StateInfo> {
        vec![
            StateInfo {
                name: "conv".into(),
                shape: fixed(&[2, 3]),
                elem,
            },
            StateInfo {
                name: "k".into(),
                shape: vec![Dim::Past, Dim::Fixed(4)],
                elem,
            },
        ]
    }

    #[test]
    fn windows_start_at_zero_kv_is_preallocated_and_reset_keeps_it() {
        let q = ActQuant {
            scale: 0.5,
            zero_point: -3,
            bits: 8,
        };
        let mut st = SequenceState::new(&slots(Elem::Q(q)), 10);
        assert_eq!(st.slots()[0], SlotData::I16(vec![-3; 6]));
        let SlotData::I16(k) = st.slot_mut(1) else {
            panic!("integer slots")
        };
        assert!(k.is_empty() && k.capacity() >= 40);
        k.extend_from_slice(&[1; 8]);
        if let SlotData::I16(w) = st.slot_mut(0) {
            w.fill(7);
        }
        st.advance(2);
        assert_eq!((st.len(), st.window_bytes(), st.kv_bytes()), (2, 12, 16));
        assert!(st.check(&slots(Elem::Q(q)), 9).is_err(), "11 > context 10");
        assert!(
            st.check(&slots(Elem::F32), 1).is_err(),
            "another graph's slots"
        );
        st.reset();
        assert_eq!(st, SequenceState::new(&slots(Elem::Q(q)), 10));
        let SlotData::I16(k) = st.slot_mut(1) else {
            panic!("integer slots")
        };
        assert!(k.capacity() >= 40, "reset keeps the K/V allocation");
        let f = SequenceState::new(&slots(Elem::F32), 1);
        assert_eq!(f.slots()[0], SlotData::F32(vec![0.0; 6]));
    }
}
