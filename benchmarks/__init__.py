"""Speed and accuracy of our fast paths against the original's way, and the GPU acceptance check."""
