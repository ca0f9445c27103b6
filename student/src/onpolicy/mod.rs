//! On-policy distillation: the student samples, the teacher scores every sampled token, and the
//! student minimises a per-token divergence to the teacher on its own samples ([`loss`]).

pub mod loss;
