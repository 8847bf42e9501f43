"""The double-win report's library half (read results.json, analyse, render) and ticket statistics."""
