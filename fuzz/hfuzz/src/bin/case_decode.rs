//! honggfuzz: the case decoder never panics; whatever decodes round-trips.
fn main() {
    loop {
        honggfuzz::fuzz!(|data: &[u8]| {
            xsave_oracle::case::check_round_trip(data);
        });
    }
}
