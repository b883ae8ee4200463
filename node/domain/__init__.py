"""Domain rules: ID numbers, regions, the data-item catalogue, purpose policy, predicates."""
