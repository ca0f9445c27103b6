//! What a step minimises on its micro-batches: SFT's cross-entropy (and KD), an on-policy
//! divergence to a teacher ([`super::divergence`]), or the clipped policy-gradient loss of RL
//! ([`super::policy`]). One dispatch, used by the whole-model step and the unit-by-unit one.

use burn::prelude::*;

use super::divergence::Divergence;
use super::loss::{Head, LossSums};
use super::pack::Batch;
use super::policy::{PolicyFigures, PolicyLoss};

/// The loss of a step that is not SFT's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// A per-token divergence to the teacher on the student's own samples.
    Divergence(Divergence),
    /// GRPO / Dr. GRPO / DAPO on the student's rollouts.
    Policy(PolicyLoss),
}

impl From<Divergence> for Objective {
    fn from(d: Divergence) -> Self {
        Objective::Divergence(d)
    }
}

/// The loss sums of one micro-batch from its final hidden states `[rows, len, hidden]` (`None`:
/// SFT), and what the policy loss measured (zero for the others).
pub fn losses_from_hidden<B: Backend>(
    head: &Head<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
    objective: Option<Objective>,
) -> (LossSums<B>, PolicyFigures) {
    match objective {
        None => (super::loss::losses_from_hidden(head, hidden, batch, device), Default::default()),
        Some(Objective::Divergence(d)) => (
            super::divergence::losses_from_hidden(head, hidden, batch, device, d),
            Default::default(),
        ),
        Some(Objective::Policy(p)) => {
            super::policy::losses_from_hidden(head, hidden, batch, device, p)
        }
    }
}
