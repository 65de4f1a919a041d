"""PP-OCRv6 text reading, split as the pipeline runs: detection input (detection), its
post-processing (db_postprocess), recognition with CTC (recognition), reading order
(reading_order), and the batch pipeline that calls the networks (pipeline)."""
