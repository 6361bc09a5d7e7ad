"""The methods KPL is compared with (clip, dclip, cupl, inmap, TransCLIP) and the kNN graph they share."""
