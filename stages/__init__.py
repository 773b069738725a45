"""The ML of SAM2VideoX: stage one (`stages.extract`), stage two (`stages.distill`), shared LGF (`stages.core.lgf`)."""
