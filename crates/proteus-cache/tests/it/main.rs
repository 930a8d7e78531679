mod conformance;
mod tiered;
