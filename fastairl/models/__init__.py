"""Networks: ResNet encoders with the reference's key names, heads, and BN kinds."""
