//! An engine that executes nothing, for testing the machine's own logic
//! (checkpoints, the ledger check) without an emulator.

use std::collections::BTreeSet;

use crate::devices::DeviceBus;
use crate::engine::{Engine, EngineError, EngineStats, RunExit};
use crate::layout::Shape;
use crate::units::{Gpa, GuestNs, Instructions, PageIndex, VcpuId, PAGE_SIZE};
use crate::vcpu::VcpuState;

/// Memory and vCPU states in plain vectors; `run` only advances time.
#[derive(Debug)]
pub(crate) struct FakeEngine {
    pub memory: Vec<u8>,
    pub vcpus: Vec<VcpuState>,
    pub dirty: BTreeSet<u32>,
    pub now: u64,
}

impl FakeEngine {
    pub(crate) fn new(shape: &Shape) -> FakeEngine {
        FakeEngine {
            memory: vec![0; shape.memory_bytes() as usize],
            vcpus: (0..shape.vcpus())
                .map(|v| crate::boot::initial_vcpu_state(shape, v))
                .collect(),
            dirty: BTreeSet::new(),
            now: 0,
        }
    }

    fn range(&self, gpa: Gpa, len: usize) -> Result<std::ops::Range<usize>, EngineError> {
        let start = gpa.0 as usize;
        if start + len > self.memory.len() {
            return Err(EngineError::OutOfRange { gpa, len });
        }
        Ok(start..start + len)
    }
}

impl Engine for FakeEngine {
    fn run(&mut self, _bus: &mut DeviceBus, budget: Instructions) -> Result<RunExit, EngineError> {
        self.now += budget.0;
        Ok(RunExit::Idle)
    }

    fn now(&self) -> GuestNs {
        GuestNs(self.now)
    }

    fn read_memory(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), EngineError> {
        buf.copy_from_slice(&self.memory[self.range(gpa, buf.len())?]);
        Ok(())
    }

    fn write_memory(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), EngineError> {
        let range = self.range(gpa, bytes.len())?;
        for page in range.start as u64 / PAGE_SIZE..=(range.end as u64 - 1) / PAGE_SIZE {
            self.dirty.insert(page as u32);
        }
        self.memory[range].copy_from_slice(bytes);
        Ok(())
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<PageIndex>, EngineError> {
        Ok(std::mem::take(&mut self.dirty)
            .into_iter()
            .map(PageIndex)
            .collect())
    }

    fn vcpu_state(&self, vcpu: VcpuId) -> Result<VcpuState, EngineError> {
        self.vcpus
            .get(usize::from(vcpu.0))
            .cloned()
            .ok_or(EngineError::NoSuchVcpu(vcpu.0))
    }

    fn set_vcpu_state(&mut self, vcpu: VcpuId, state: &VcpuState) -> Result<(), EngineError> {
        let slot = self
            .vcpus
            .get_mut(usize::from(vcpu.0))
            .ok_or(EngineError::NoSuchVcpu(vcpu.0))?;
        *slot = state.clone();
        Ok(())
    }

    fn save_engine_state(&self) -> Vec<u8> {
        self.now.to_le_bytes().to_vec()
    }

    fn restore_engine_state(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| EngineError::BadState("length".into()))?;
        self.now = u64::from_le_bytes(bytes);
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}
