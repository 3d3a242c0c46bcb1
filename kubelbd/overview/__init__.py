"""What kubelbd serves and refuses, for the operator: records (and what Envoy's admin says it
holds) turned into one overview, which `kubelbd status|routes|why` and the status page both
render. Pure: the caller loads the objects (kubelbd.snapshot) and hands them in, so every
answer can be tested from inputs alone and the two views can never disagree."""
