"""Business metrics: declarations (tenant configuration) and the stakeholder report."""
