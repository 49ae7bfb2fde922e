//! The sandbox launcher on its own, for the executor crate's tests.
fn main() {
    tandem_executor::sandbox::launcher_main()
}
